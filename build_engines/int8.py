"""`build_engines --int8`: cascade calibration on the robot's episodes, Q/DQ parts, and the accuracy gate.

Order: the bundle's parts in run order (runtime/plan.py; vision, trunk, head for Kosmos-2 + LSTM). Each part is
calibrated on its upstream as deployed (cascade.py), quantized (quantize.py), and gated at once on held-out frames
(per-part cosine against FP32, each part fed the same FP32 inputs so errors do not compound). Then the end-to-end
gate runs held-out episodes through the real runtime pipeline twice, FP32 and as deployed, and compares chunk[0]
(MAE, max, sign agreement). A part that fails falls
back to FP16 with a warning in the manifest (`--on-gate-failure fallback`), or the build stops (`stop`); when the
end-to-end gate fails, the INT8 part with the lowest cosine falls back first, until the gate passes.

Every gate comparison is NaN-aware: a NaN or inf output, cosine or error FAILS its gate (`cosine()` of a NaN output
is NaN, and NaN must not drop out of `min`/`max` on the way to a comparison).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from build_engines import device_graphs
from build_engines.memory import stage_memory
from build_engines.quantize import QuantSettings, quantize_part
from calibration.cascade import EpisodeFrames, Feed, PlanValues, TextFeeds, load_frames
from calibration.sampling import FrameRef, SampleSettings, sample_frames, split_episodes
from runtime.backends.base import Runner
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner
from runtime.bundle import Bundle, PartEntry
from runtime.episodes import DatasetScan, EpisodeInfo, iter_episode_frames, scan_episodes
from runtime.errors import MobileVLAError, check_range
from runtime.pipeline import PolicyPipeline
from runtime.preprocess import COLOR_ORDERS, check_choice
from runtime.prompt import PromptEncoder
from runtime.scoring import DEFAULT_DEAD_BAND, Scores, cosine, score

log = logging.getLogger("build_engines.int8")
T = TypeVar("T")
GATE_FAILURE_ACTIONS = ("fallback", "stop")


def progress(items: Iterable[T], description: str) -> Iterator[T]:
    """A progress bar on an interactive stderr; silent in logs and CI."""
    from tqdm import tqdm

    yield from tqdm(items, desc=description, disable=None, leave=False, unit="it")


@dataclass(frozen=True)
class GateSettings:
    mae: float = 0.02  # chunk[0] mean abs error vs FP32, velocity units
    sign_agreement: float = 0.98
    cosine: float = 0.99  # per part, mean over held-out samples
    on_failure: str = "fallback"
    dead_band: float = DEFAULT_DEAD_BAND  # |v| at or below this counts as no motion when comparing signs
    part_frames: int = 64  # held-out frames for the per-part cosine

    def validate(self) -> None:
        check_choice("--on-gate-failure", self.on_failure, GATE_FAILURE_ACTIONS)
        check_range("--gate-mae", self.mae, 0.0, 1.0, low_open=True,
                    fix="it is the chunk[0] mean abs error allowed INT8 vs FP32, in velocity units (default 0.02)")
        check_range("--gate-sign", self.sign_agreement, 0.0, 1.0, low_open=True,
                    fix="it is a fraction of frames (default 0.98)")
        check_range("--gate-cosine", self.cosine, 0.0, 1.0, low_open=True,
                    fix="it is a cosine similarity (default 0.99)")
        check_range("gate dead band", self.dead_band, 0.0, 1.0)
        check_range("gate part frames", self.part_frames, 1)


@dataclass(frozen=True)
class Int8Options:
    data: Path
    color: str = "bgr"  # channel order of the episodes' stored images (the recorder writes bgr8)
    sample: SampleSettings = field(default_factory=SampleSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    gate: GateSettings = field(default_factory=GateSettings)

    def validate(self) -> None:
        check_choice("episode colour order", self.color, COLOR_ORDERS)
        self.sample.validate()
        self.quant.validate()
        self.gate.validate()


@dataclass
class PartGate:
    cosine_mean: float
    cosine_min: float
    samples: int
    passed: bool


@dataclass
class Int8Result:
    parts: dict[str, PartEntry]
    warnings: list[str]
    report: dict[str, Any]


def part_gate(fp32: Runner, int8: Runner, feeds: Sequence[Feed], threshold: float) -> PartGate:
    values = []
    for feed in feeds:
        want, got = fp32.infer(feed), int8.infer(feed)
        values += [cosine(got[name], want[name]) for name in want]
    mean = float(np.mean(values)) if values else math.nan  # np.mean/np.min propagate a NaN cosine
    low = float(np.min(values)) if values else math.nan
    return PartGate(mean, low, len(feeds), math.isfinite(mean) and math.isfinite(low) and mean >= threshold)


def gate_rank(gate: PartGate) -> float:
    """The weakest part falls back first; a NaN cosine is the weakest of all."""
    return gate.cosine_mean if math.isfinite(gate.cosine_mean) else -math.inf


def chunk0_episodes(bundle: Bundle, runners: Mapping[str, OnnxRuntimeRunner], episodes: Sequence[EpisodeInfo],
                    color: str, description: str) -> np.ndarray:
    """chunk[0] of every frame of `episodes` through the runtime pipeline, history reset per episode."""
    manifest = bundle.manifest
    backend = OnnxRuntimeBackend(bundle, runners)  # the runners stay the caller's: activated, not deactivated here
    backend.activate()
    pipeline = PolicyPipeline(bundle, backend)
    values = []
    for info in progress(episodes, description):
        pipeline.reset()
        pipeline.set_instruction(info.instruction or manifest.prompt.default_instruction)
        for item in iter_episode_frames(info, color, manifest.preprocessing, manifest.policy.action_dim):
            values.append(pipeline.step(item.pixels).velocity.copy())
    return np.stack(values)


def gate_refs(held_out: Sequence[EpisodeInfo], frames: int, seed: int) -> list[FrameRef]:
    """Up to `frames` held-out frames, spread over the held-out episodes like the calibration sample."""
    total = sum(e.num_frames for e in held_out)
    return sample_frames(tuple(held_out), SampleSettings(frames=min(frames, total), seed=seed + 7))


def scan_dataset(options: Int8Options, window: int) -> DatasetScan:
    log.info("calibration data: %s", options.data)
    scan = scan_episodes(options.data, require_actions=False, min_frames=window)
    if scan.skipped:
        log.warning("%d episode(s) skipped, %d usable", len(scan.skipped), len(scan.episodes))
    return scan


class Quantizer:
    """Runs the cascade over the parts of a staged bundle, in run order."""

    def __init__(self, bundle: Bundle, options: Int8Options, stack: ExitStack) -> None:
        self.bundle, self.options, self.stack = bundle, options, stack
        manifest = bundle.manifest
        self.window = manifest.policy.window
        self.encoder = PromptEncoder(bundle.path(manifest.prompt.tokenizer_file), manifest.prompt)
        self.text = TextFeeds(self.encoder, manifest.prompt.default_instruction)
        self.names = list(manifest.parts)
        self.fp32 = {name: self.activate(name, bundle.part_path(name)) for name in self.names}
        self.int8: dict[str, OnnxRuntimeRunner] = {}
        self.deployed: dict[str, Runner] = {}
        self._values: dict[int, PlanValues] = {}  # per frame set: every part's outputs, each computed once

    def values(self, frames: Mapping[Path, EpisodeFrames]) -> PlanValues:
        if id(frames) not in self._values:
            self._values[id(frames)] = PlanValues(self.bundle.plan, frames, self.text, self.window)
        return self._values[id(frames)]

    def activate(self, name: str, path: Path) -> OnnxRuntimeRunner:
        runner = OnnxRuntimeRunner(path, self.bundle.manifest.parts[name].spec)
        self.stack.enter_context(runner)
        return runner

    def calibration_feeds(self, name: str, refs: Sequence[FrameRef], frames: Mapping[Path, EpisodeFrames],
                          upstream: Mapping[str, Runner]) -> list[Feed]:
        """Part `name`'s inputs at `refs`, its upstream parts run with `upstream` (the cascade, cascade.py)."""
        return self.values(frames).feeds(name, refs, upstream)

    def quantize(self, name: str, refs: Sequence[FrameRef], frames: Mapping[Path, EpisodeFrames]) -> dict[str, Any]:
        entry = self.bundle.manifest.parts[name]
        started = time.perf_counter()
        feeds = self.calibration_feeds(name, refs, frames, self.deployed)
        collected = time.perf_counter() - started
        target = self.bundle.root / f"{name}.int8.onnx"
        with self.sessions_released():  # ONNX Runtime's quantizer holds the part several times over
            summary = quantize_part(self.bundle.part_path(name), target, feeds, self.options.quant,
                                    external_data=entry.external_data is not None)
        self.int8[name] = self.activate(name, target)
        return {"calibration_samples": len(feeds), "collect_s": round(collected, 2),
                "quantize_s": round(time.perf_counter() - started - collected, 2), "qdq": summary.to_dict()}

    @contextmanager
    def sessions_released(self) -> Iterator[None]:
        """Close every open session for the duration (a real-size build: 6.7 GB of FP32 sessions), then reopen them:
        the feeds are computed already."""
        runners = [r for r in (*self.fp32.values(), *self.int8.values()) if r.active]
        for runner in runners:
            runner.deactivate()
        try:
            yield
        finally:
            for runner in runners:
                runner.activate()


def external_file(root: Path, onnx_name: str) -> str | None:
    data = root / f"{onnx_name}.data"
    return data.name if data.is_file() else None


def quantize_bundle(bundle: Bundle, options: Int8Options) -> Int8Result:
    """Write `<part>.int8.onnx` beside each FP32 part of a staged bundle and gate them; returns updated entries."""
    options.validate()
    started = time.perf_counter()
    manifest = bundle.manifest
    window = manifest.policy.window
    scan = scan_dataset(options, window)
    split = split_episodes(scan.episodes, options.sample)
    refs = sample_frames(split.pool, options.sample)
    held_refs = gate_refs(split.held_out, options.gate.part_frames, options.sample.seed)
    calib_frames = load_frames(progress(refs, "reading calibration frames"), options.color, manifest.preprocessing,
                               window)
    held_frames = load_frames(held_refs, options.color, manifest.preprocessing, window)
    gates: dict[str, PartGate] = {}
    quantization: dict[str, Any] = {}
    warnings: list[str] = []
    memory: dict[str, float] = {}  # peak resident memory of calibration + Q/DQ, then of the device graphs
    with ExitStack() as stack:
        q = Quantizer(bundle, options, stack)
        for name in progress(q.names, "quantizing parts"):
            quantization[name] = q.quantize(name, refs, calib_frames)
            gate_feeds = q.calibration_feeds(name, held_refs, held_frames, q.fp32)
            gates[name] = part_gate(q.fp32[name], q.int8[name], gate_feeds, options.gate.cosine)
            log.info("%s INT8: cosine mean %.5f min %.5f over %d held-out samples: %s", name,
                     gates[name].cosine_mean, gates[name].cosine_min, gates[name].samples,
                     "passed" if gates[name].passed else "FAILED")
            if not gates[name].passed:
                warnings.append(gate_failure(name, gates[name], options.gate))
            q.deployed[name] = q.int8[name] if gates[name].passed else q.fp32[name]
        reference = chunk0_episodes(bundle, q.fp32, split.held_out, options.color, "gate: FP32 episodes")
        end_to_end, fallbacks = end_to_end_gate(bundle, q, gates, reference, split.held_out, options)
        if not end_to_end["passed"]:
            warnings.append(
                f"INT8 end-to-end gate failed: chunk[0] MAE {end_to_end['mae']:.4f} (limit {options.gate.mae}), "
                f"sign agreement {end_to_end['sign_agreement']:.1%} (limit {options.gate.sign_agreement:.0%}) with "
                f"INT8 parts {end_to_end['int8_parts'] or 'none'}"
            )
        warnings += [f"{name}: INT8 fell back to FP16 to meet the end-to-end gate" for name in fallbacks]
        parts = {}
        for name in q.names:
            onnx_name = f"{name}.int8.onnx"
            parts[name] = replace(manifest.parts[name], int8_onnx=onnx_name,
                                  int8_external_data=external_file(bundle.root, onnx_name),
                                  precision="int8" if name in end_to_end["int8_parts"] else "fp16")
        for runner in q.int8.values():  # the Q/DQ sessions are done; the device graphs' gate needs the memory
            runner.deactivate()
        stage_memory(memory, "int8_qdq")
        device = device_graphs.with_episodes(q, parts, refs, calib_frames, held_refs, held_frames, split.held_out,
                                             reference, options.gate, options.color)
        parts = device.parts
        warnings += device.warnings
        stage_memory(memory, "int8_device_graphs")
    if options.gate.on_failure == "stop" and warnings:
        raise MobileVLAError(
            "the INT8 accuracy gate failed: " + "; ".join(warnings) + ". No bundle was written. Calibrate on more or "
            "more representative episodes (--calibration-frames), try --calibration-method percentile, or pass "
            "--on-gate-failure fallback to keep the failing parts at FP16"
        )
    for warning in warnings:
        log.warning("%s", warning)
    report = {
        "dataset": dataset_report(options, scan, split.pool, split.held_out),
        "sample": {**asdict(options.sample), "calibration_frames": len(refs),
                   "per_scenario": count_by_scenario(refs), "gate_part_frames": len(held_refs)},
        "quantization": {"tool": "onnxruntime.quantization (QDQ)", **asdict(options.quant), "parts": quantization},
        "gate": {"thresholds": asdict(options.gate), "parts": {n: asdict(g) for n, g in gates.items()},
                 "end_to_end": end_to_end},
        "device_graphs": device.report,
        "precision": {name: entry.precision for name, entry in parts.items()},
        "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 1),
        "memory": memory,
    }
    return Int8Result(parts, warnings, report)


def gate_failure(name: str, gate: PartGate, settings: GateSettings) -> str:
    return (f"{name}: INT8 cosine {gate.cosine_mean:.6f} < {settings.cosine} on held-out frames; the part falls "
            f"back to FP16")


def end_to_end_gate(bundle: Bundle, q: Quantizer, gates: Mapping[str, PartGate], reference: np.ndarray,
                    held_out: Sequence[EpisodeInfo], options: Int8Options) -> tuple[dict[str, Any], list[str]]:
    """Compare chunk[0] as deployed with FP32; fall back the weakest INT8 part until the gate passes."""
    gate = options.gate
    int8_parts = [name for name in q.names if gates[name].passed]
    fallbacks: list[str] = []
    while True:
        runners = {name: q.int8[name] if name in int8_parts else q.fp32[name] for name in q.names}
        deployed = chunk0_episodes(bundle, runners, held_out, options.color, "gate: INT8 episodes")
        scores: Scores = score(deployed, reference, gate.dead_band)
        finite = bool(np.isfinite(deployed).all() and np.isfinite(reference).all())
        passed = (finite and math.isfinite(scores.mae) and scores.mae <= gate.mae
                  and math.isfinite(scores.direction) and scores.direction >= gate.sign_agreement)
        result = {"passed": passed, "finite": finite, "mae": scores.mae, "max_abs_err": scores.max_abs_err,
                  "sign_agreement": scores.direction, "frames": scores.frames, "episodes": len(held_out),
                  "int8_parts": list(int8_parts), "per_axis": scores.to_dict()["axes"]}
        log.info("end-to-end gate with INT8 %s: chunk[0] MAE %.4f, max %.4f, sign agreement %.1f%%: %s",
                 int8_parts or "nowhere", scores.mae, scores.max_abs_err, 100 * scores.direction,
                 "passed" if passed else "FAILED")
        if passed or not int8_parts or gate.on_failure == "stop":
            return result, fallbacks
        weakest = min(int8_parts, key=lambda n: gate_rank(gates[n]))
        int8_parts = [n for n in int8_parts if n != weakest]
        fallbacks.append(weakest)


def count_by_scenario(refs: Sequence[FrameRef]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ref in refs:
        counts[ref.episode.scenario] = counts.get(ref.episode.scenario, 0) + 1
    return dict(sorted(counts.items()))


def dataset_report(options: Int8Options, scan: DatasetScan, pool: Sequence[EpisodeInfo],
                   held_out: Sequence[EpisodeInfo]) -> dict[str, Any]:
    return {
        "path": str(options.data),
        "color": options.color,
        "episodes": len(scan.episodes),
        "frames": scan.total_frames,
        "skipped": [{"file": str(path), "reason": reason} for path, reason in scan.skipped],
        "scenarios": sorted({e.scenario for e in scan.episodes}),
        "calibration_pool": [e.name for e in pool],
        "held_out": [e.name for e in held_out],
    }
