"""`runtime --benchmark`: per-stage p50/p90/p99/max, FPS, jitter, capture-to-command latency, peak memory, the
health monitor's readings and (on a Jetson) whether the clocks are locked. A table, JSON and a PNG plot."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import MobileVLAError
from runtime.host import ClockStatus, peak_rss_mb

log = logging.getLogger("runtime.benchmark")


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

    def clear(self) -> None:
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def values(self, stage: str) -> np.ndarray:
        return self._values[stage][: self._count]


@dataclass(frozen=True)
class StageStats:
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> StageStats:
        if not len(values):
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
        return cls(p50, p90, p99, float(values.mean()), float(values.max()))


@dataclass
class BenchmarkReport:
    frames: int
    warmup: int
    wall_s: float
    fps: float
    stages: dict[str, StageStats]
    backend: str
    source: str
    jitter_ms: float  # standard deviation of the frame period
    peak_rss_mb: float
    monitor: dict[str, object] = field(default_factory=dict)
    clocks: ClockStatus | None = None
    alloc_growth_kb: float | None = None  # tracemalloc growth over the timed frames (--alloc-check)
    stops: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the instruction parts (runtime/plan.py), which run per instruction, not per frame: name -> runs, last_ms
    instruction_parts: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames, "warmup": self.warmup, "wall_s": self.wall_s, "fps": self.fps,
            "backend": self.backend, "source": self.source, "jitter_ms": self.jitter_ms,
            "peak_rss_mb": self.peak_rss_mb, "alloc_growth_kb": self.alloc_growth_kb,
            "stages_ms": {name: vars(stats) for name, stats in self.stages.items()},
            "monitor": self.monitor, "clocks": None if self.clocks is None else vars(self.clocks),
            "zero_commands": self.stops, "warnings": self.warnings, "instruction_parts": self.instruction_parts,
        }

    def table(self) -> str:
        lines = [f"{'stage':<13} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}", "-" * 53]
        for name, s in self.stages.items():
            lines.append(f"{name:<13} {s.p50:>9.3f} {s.p90:>9.3f} {s.p99:>9.3f} {s.max:>9.3f}")
        lines.append("-" * 53)
        for name, run in self.instruction_parts.items():
            lines.append(f"{name:<13} {run['last_ms']:>9.3f} ms per instruction: ran {run['runs']:.0f}x in "
                         f"{self.frames + self.warmup} frames (cached between instruction changes)")
        lines.append(f"{self.frames} frames after {self.warmup} warm-up: {self.fps:.1f} FPS, jitter "
                     f"{self.jitter_ms:.3f} ms, peak RSS {self.peak_rss_mb:.0f} MB")
        lines.append(f"backend {self.backend}; source {self.source}")
        if self.alloc_growth_kb is not None:
            lines.append(f"allocation growth over the timed frames: {self.alloc_growth_kb:.1f} KB (tracemalloc)")
        if self.monitor:
            lines.append("monitor: " + ", ".join(f"{k} {v}" for k, v in self.monitor.items()))
        if self.clocks is not None:
            lines.append(f"clocks: power mode {self.clocks.power_mode}, locked {self.clocks.locked}")
        if self.stops:
            lines.append("zero commands: " + ", ".join(f"{k} {v}" for k, v in self.stops.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def summarize(recorder: StageRecorder, warmup: int, wall_s: float, backend: str, source: str) -> BenchmarkReport:
    stages = {stage: StageStats.of(recorder.values(stage)) for stage in recorder.stages}
    totals = recorder.values("total") if "total" in recorder.stages else np.zeros(0)
    jitter = float(totals.std()) if len(totals) > 1 else 0.0
    fps = recorder.count / wall_s if wall_s > 0 else 0.0
    return BenchmarkReport(recorder.count, warmup, wall_s, fps, stages, backend, source, jitter, peak_rss_mb())


def import_pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or the error that says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MobileVLAError("--plot needs matplotlib: pip install 'mobile-vla-edge[plot]' (or matplotlib)") from exc
    return plt


def write_plot(recorder: StageRecorder, report: BenchmarkReport, path: Path) -> None:
    """Per-frame latency of every stage and the capture-to-command latency distribution, as a PNG."""
    plt = import_pyplot()
    figure, (timeline, histogram) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for stage in recorder.stages:
        if stage not in ("frame_copy", "schedule", "publish", "latency"):
            timeline.plot(recorder.values(stage), label=stage, linewidth=0.8)
    timeline.set(xlabel="frame", ylabel="ms", title=f"per-frame stage time ({report.backend})")
    timeline.legend(loc="upper right", fontsize=8)
    latency = recorder.values("latency")
    histogram.hist(latency, bins=40)
    stats = report.stages["latency"]
    histogram.set(xlabel="ms", ylabel="frames",
                  title=f"capture→command: p50 {stats.p50:.2f}, p99 {stats.p99:.2f} ms")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
