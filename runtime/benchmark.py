"""Latency statistics for `runtime --benchmark`: per-stage p50/p99, FPS, a table and JSON."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class StageRecorder:
    """Preallocated per-stage timings (ms), so recording allocates nothing per frame."""

    def __init__(self, stages: tuple[str, ...], capacity: int) -> None:
        self.stages = stages
        self._values = {stage: np.zeros(capacity, dtype=np.float64) for stage in stages}
        self._count = 0
        self._capacity = capacity

    def record(self, timings_ms: dict[str, float]) -> None:
        if self._count >= self._capacity:
            return
        for stage in self.stages:
            self._values[stage][self._count] = timings_ms[stage]
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def values(self, stage: str) -> np.ndarray:
        return self._values[stage][: self._count]


@dataclass(frozen=True)
class StageStats:
    p50: float
    p99: float
    mean: float
    max: float


@dataclass(frozen=True)
class BenchmarkReport:
    frames: int
    warmup: int
    wall_s: float
    fps: float
    stages: dict[str, StageStats]
    backend: str

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "warmup": self.warmup,
            "wall_s": self.wall_s,
            "fps": self.fps,
            "backend": self.backend,
            "stages_ms": {name: vars(stats) for name, stats in self.stages.items()},
        }

    def table(self) -> str:
        lines = [
            f"{'stage':<8} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'max ms':>9}",
            "-" * 48,
        ]
        for name, s in self.stages.items():
            lines.append(f"{name:<8} {s.p50:>9.3f} {s.p99:>9.3f} {s.mean:>9.3f} {s.max:>9.3f}")
        lines.append("-" * 48)
        lines.append(f"{self.frames} frames after {self.warmup} warm-up, {self.fps:.1f} FPS ({self.backend})")
        return "\n".join(lines)


def summarize(recorder: StageRecorder, warmup: int, wall_s: float, backend: str) -> BenchmarkReport:
    stages = {}
    for stage in recorder.stages:
        values = recorder.values(stage)
        stages[stage] = StageStats(
            p50=float(np.percentile(values, 50)),
            p99=float(np.percentile(values, 99)),
            mean=float(values.mean()),
            max=float(values.max()),
        )
    fps = recorder.count / wall_s if wall_s > 0 else 0.0
    return BenchmarkReport(recorder.count, warmup, wall_s, fps, stages, backend)
