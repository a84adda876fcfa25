"""The device's graphs and their numerics gate (docs/design.md §4): what TensorRT will run, checked on the CPU.

Per part, after the FP32 export (and the INT8 quantization when asked for):
1. **Overflow report**: the FP32 graph runs on the calibration frames with every float tensor exposed; the largest
   |activation| per node is kept (a running max: memory does not grow with the frames), and every node within 4x
   of the FP16 limit (65504) is listed with the fix the build applies: that node stays FP32.
2. **FP16-typed graphs** (`build_engines/fp16.py`): `NAME.fp16.onnx` and, for a part that passed the INT8 gate,
   `NAME.int8.fp16.onnx` (its Q/DQ graph with FP16 float parts); the manifest counts their INT8/FP16/FP32 layers.
3. **Gate**: the FP16-typed graphs' rounding emulation runs on the CPU (ONNX Runtime) against FP32: per-part
   cosine, then chunk[0] MAE / max error / sign agreement end to end, for FP16 everywhere and for the INT8-with-FP16
   mix the device runs. The INT8 gate's thresholds and rules apply: a
   part whose FP16 graph fails keeps the FP32 graph for its engine (TensorRT's FP16 flag, as before) with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from build_engines.fp16 import FLOAT, FP16_MAX, fp16_emulation, layer_precisions, to_fp16, value_types
from build_engines.graph_passes import save_model
from calibration.cascade import EpisodeFrames, Feed
from calibration.sampling import FrameRef
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.bundle import Bundle, PartEntry
from runtime.episodes import EpisodeInfo
from runtime.specs import PartSpec

if TYPE_CHECKING:
    from build_engines.int8 import GateSettings, Quantizer

log = logging.getLogger("build_engines.fp16")

OVERFLOW_MARGIN = 4.0  # a node whose largest |activation| is within this factor of 65504 stays FP32
# Attention masks use float32's lowest value as "minus infinity"; in FP16 it is clipped to -65504, which masks as
# well (exp(-65504) is 0). Such sentinels are not activations: the scan leaves them out.
MASK_SENTINEL = 1e30
EXECUTED_WITH = "the FP16 rounding emulation on ONNX Runtime (every FP16 tensor rounded to FP16)"
SHOW = 10


@dataclass
class DeviceGraphs:
    parts: dict[str, PartEntry]
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def overflow_scan(path: Path, feeds: Sequence[Feed]) -> dict[str, float]:
    """Largest |value| of every float node output over `feeds` (FP32 run), by producing node name."""
    model = onnx.load(str(path), load_external_data=False)
    types = value_types(model)
    producer = {out: node.name or out for node in model.graph.node for out in node.output}
    known = {o.name for o in model.graph.output}
    exposed = [name for name in producer if types.get(name) == FLOAT and name not in known]
    for name in exposed:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, FLOAT, None))
    session = scan_session(model, path)
    names = [o.name for o in session.get_outputs()]
    peaks: dict[str, float] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            if name not in producer:
                continue
            magnitude = np.abs(value)
            magnitude = magnitude[~(np.isfinite(magnitude) & (magnitude >= MASK_SENTINEL))]
            if magnitude.size:
                peak = float(magnitude.max())  # NaN or inf in an FP32 run: the worst there is
                node = producer[name]
                peaks[node] = max(peaks.get(node, 0.0), peak) if math.isfinite(peak) else math.inf
    return peaks


def scan_session(model: onnx.ModelProto, path: Path) -> Any:
    """An ONNX Runtime session of `model` (the part at `path` with more outputs). A part with external data (the
    real-size trunk: 5.4 GB, past protobuf's 2 GB limit) is saved as a graph beside the part that references the
    same data file, so nothing is copied; the graph file goes once the session holds the weights."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if not any(uses_external_data(tensor) for tensor in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))  # no-op for embedded weights
        return ort.InferenceSession(model.SerializeToString(), providers=providers)
    target = path.with_name(f".{path.stem}.scan.onnx")
    onnx.save(model, str(target))
    try:
        return ort.InferenceSession(str(target), providers=providers)
    finally:
        target.unlink()


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def overflow_report(peaks: Mapping[str, float]) -> dict[str, Any]:
    limit = FP16_MAX / OVERFLOW_MARGIN
    flagged = sorted((name for name, peak in peaks.items() if not peak <= limit), key=lambda n: -peaks[n])
    top = sorted(peaks, key=lambda n: -peaks[n])[:SHOW]
    return {
        "fp16_limit": FP16_MAX,
        "margin": OVERFLOW_MARGIN,
        "largest": {name: peaks[name] for name in top},
        "flagged": {name: peaks[name] for name in flagged},
        "fix": "flagged nodes are kept FP32 in the device graphs" if flagged else "none needed",
    }


def write_part(root: Path, source: str, target: str, keep: set[str]) -> tuple[str, str | None, dict[str, Any],
                                                                             dict[str, str]]:
    """`root/source` as an FP16-typed graph at `root/target`; (file, external data, layer counts, FP32 nodes)."""
    model = onnx.load(str(root / source))
    result = to_fp16(model, keep)
    external = save_model(result.model, root / target)
    if result.clipped:
        log.info("%s: %d constants clipped to ±65504 on the way to FP16 (e.g. %s)", target, len(result.clipped),
                 result.clipped[0])
    return target, external, layer_precisions(result.model), result.kept


def gate_runner(root: Path, onnx_name: str, spec: PartSpec) -> OnnxRuntimeRunner:
    """The FP16-typed graph's rounding emulation on ONNX Runtime (CPU).

    Not the FP16 graph itself: ONNX Runtime runs the FP16 nodes it has no CPU kernel for in FP32 behind Casts it
    inserts, so an FP16 overflow the device would hit (inf, then NaN) can vanish in its native run (measured: a
    MatMul reaching 1e5 stays finite). The emulation stores every FP16 tensor as FP16, as the device does.
    """
    emulated = root / f".{onnx_name}.emulated.onnx"
    save_model(fp16_emulation(onnx.load(str(root / onnx_name))), emulated)
    runner = OnnxRuntimeRunner(emulated, spec)
    runner.activate()
    emulated.unlink()  # the session holds the graph; the bundle keeps only what the device runs
    return runner


def part_entries(bundle: Bundle, flagged: Mapping[str, set[str]],
                 int8_parts: Sequence[str]) -> tuple[dict[str, PartEntry], dict[str, Any]]:
    """Write every part's FP16-typed graphs; the updated entries and, per part, what stayed FP32 and why."""
    parts: dict[str, PartEntry] = {}
    kept_report: dict[str, Any] = {}
    for name, entry in bundle.manifest.parts.items():
        fp16, fp16_data, fp16_layers, kept = write_part(bundle.root, entry.onnx, f"{name}.fp16.onnx",
                                                        flagged.get(name, set()))
        layers = {"fp16": fp16_layers}
        updates: dict[str, Any] = {"fp16_onnx": fp16, "fp16_external_data": fp16_data}
        if name in int8_parts and entry.int8_onnx:
            int8, int8_data, int8_layers, _ = write_part(bundle.root, entry.int8_onnx, f"{name}.int8.fp16.onnx",
                                                         flagged.get(name, set()))
            layers["int8"] = int8_layers
            updates.update(int8_fp16_onnx=int8, int8_fp16_external_data=int8_data)
        parts[name] = replace(entry, layers=layers, **updates)
        kept_report[name] = {"fp32_nodes": len(kept), "why": sorted(set(kept.values())), "layers": layers}
        log.info("%s: FP16-typed graph %s (layers %s)", name, fp16, summary(fp16_layers))
    return parts, kept_report


def summary(layers: Mapping[str, Any]) -> str:
    fp32 = layers.get("fp32_by_op") or {}
    detail = f" ({', '.join(f'{op} {n}' for op, n in fp32.items())})" if fp32 else ""
    return f"INT8 {layers['int8']}, FP16 {layers['fp16']}, FP32 {layers['fp32']}{detail}"


def flagged_nodes(q: Quantizer, refs: Sequence[FrameRef], frames: Mapping[Path, EpisodeFrames]) -> tuple[
        dict[str, set[str]], dict[str, Any]]:
    """The overflow scan of every FP32 part over the calibration frames: nodes to keep FP32, and the report."""
    flagged: dict[str, set[str]] = {}
    report: dict[str, Any] = {}
    for name in q.names:
        peaks = overflow_scan(q.bundle.part_path(name), q.calibration_feeds(name, refs, frames, q.fp32))
        report[name] = overflow_report(peaks)
        flagged[name] = set(report[name]["flagged"])
        for node, peak in report[name]["flagged"].items():
            log.warning("%s: %s reaches |%.4g| over the calibration frames, within %gx of the FP16 limit: kept FP32 "
                        "in the device graphs", name, node, peak, OVERFLOW_MARGIN)
    return flagged, report


def with_episodes(q: Quantizer, parts: Mapping[str, PartEntry], refs: Sequence[FrameRef],
                  frames: Mapping[Path, EpisodeFrames], held_refs: Sequence[FrameRef],
                  held_frames: Mapping[Path, EpisodeFrames], held_out: Sequence[EpisodeInfo],
                  reference: np.ndarray, gate: GateSettings, color: str) -> DeviceGraphs:
    """Overflow scan, FP16-typed graphs and their gate on the held-out episodes (an `--int8` build)."""
    from build_engines.int8 import chunk0_episodes, part_gate

    bundle = replace_parts(q.bundle, parts)
    flagged, overflow = flagged_nodes(q, refs, frames)
    int8_parts = [name for name, entry in parts.items() if entry.precision == "int8"]
    updated, kept = part_entries(bundle, flagged, int8_parts)
    parts_report: dict[str, Any] = {name: {} for name in q.names}
    end_to_end: dict[str, Any] = {}
    for label in ("fp16", "int8_fp16"):  # one label's emulation sessions alive at a time (a real-size trunk: 5 GB)
        with ExitStack() as sessions:
            runners: dict[str, OnnxRuntimeRunner] = {}
            for name in q.names:
                entry = updated[name]
                graph = entry.int8_fp16_onnx if label == "int8_fp16" and entry.int8_fp16_onnx else entry.fp16_onnx
                runners[name] = gate_runner(bundle.root, str(graph), entry.spec)
                sessions.callback(runners[name].deactivate)
                if label == "fp16" or entry.int8_fp16_onnx:
                    feeds = q.calibration_feeds(name, held_refs, held_frames, q.fp32)
                    parts_report[name][label] = asdict(part_gate(q.fp32[name], runners[name], feeds, gate.cosine))
            deployed = chunk0_episodes(bundle, runners, held_out, color, f"gate: {label} episodes")
            end_to_end[label] = chunk0_gate(deployed, reference, gate)
    warnings = gate_warnings(parts_report, end_to_end, gate)
    report = {"executed_with": EXECUTED_WITH, "overflow": overflow, "fp32_kept": kept, "parts": parts_report,
              "end_to_end": end_to_end, "warnings": warnings}
    return DeviceGraphs(fallback(updated, parts_report, end_to_end), report, warnings)


def chunk0_gate(deployed: np.ndarray, reference: np.ndarray, gate: GateSettings) -> dict[str, Any]:
    """chunk[0] of a device run against FP32: MAE, max error, sign agreement, and whether the gate passes."""
    from runtime.scoring import score

    scores = score(deployed, reference, gate.dead_band)
    finite = bool(np.isfinite(deployed).all())
    passed = (finite and math.isfinite(scores.mae) and scores.mae <= gate.mae
              and math.isfinite(scores.direction) and scores.direction >= gate.sign_agreement)
    return {"passed": passed, "finite": finite, "mae": scores.mae, "max_abs_err": scores.max_abs_err,
            "sign_agreement": scores.direction, "frames": scores.frames}


def gate_warnings(parts: Mapping[str, Any], end_to_end: Mapping[str, Any], gate: GateSettings) -> list[str]:
    warnings = []
    for name, runs in parts.items():
        for label, result in runs.items():
            if not result["passed"]:
                warnings.append(f"{name}: the {label} device graph's cosine {result['cosine_mean']:.6f} < "
                                f"{gate.cosine} against FP32 on held-out frames")
    for label, result in end_to_end.items():
        if not result["passed"]:
            warnings.append(f"{label} end to end: chunk[0] MAE {result['mae']:.4f} (limit {gate.mae}), sign "
                            f"agreement {result['sign_agreement']:.1%} (limit {gate.sign_agreement:.0%})")
    return warnings


def fallback(parts: Mapping[str, PartEntry], report: Mapping[str, Any],
             end_to_end: Mapping[str, Any]) -> dict[str, PartEntry]:
    """A part whose FP16 graph fails its cosine gate (or every part, when FP16 fails end to end) builds its FP16
    engine from the FP32 graph with TensorRT's FP16 flag, as bundles did before; an INT8-with-FP16 graph that fails
    leaves the part at FP16 (the INT8 gate's rule)."""
    def passed(name: str, label: str) -> bool:
        part = report.get(name, {}).get(label)  # no per-part result without episodes: the end-to-end one decides
        return (part is None or bool(part["passed"])) and bool(end_to_end.get(label, {"passed": True})["passed"])

    out = {}
    for name, entry in parts.items():
        if not passed(name, "fp16"):
            entry = replace(entry, fp16_onnx=None, fp16_external_data=None)
        if entry.int8_fp16_onnx and not passed(name, "int8_fp16"):
            entry = replace(entry, int8_fp16_onnx=None, int8_fp16_external_data=None, precision="fp16")
        out[name] = entry
    return out


def replace_parts(bundle: Bundle, parts: Mapping[str, PartEntry]) -> Bundle:
    return Bundle(bundle.root, replace(bundle.manifest, parts=dict(parts)))


def without_episodes(bundle: Bundle, frames: int, gate: GateSettings) -> DeviceGraphs:
    """FP16-typed graphs for a build without episodes (no `--int8`): no overflow scan (it needs calibration frames),
    and the gate end to end over the parity's synthetic frames."""
    from runtime.sources.synthetic import synthetic_frame

    updated, kept = part_entries(bundle, {}, [])
    staged = replace_parts(bundle, updated)
    pictures = [synthetic_frame(i, bundle.manifest.preprocessing) for i in range(frames)]
    with ExitStack() as stack:
        fp32, fp16 = {}, {}
        for name, entry in updated.items():
            fp32[name] = stack.enter_context(OnnxRuntimeRunner(bundle.part_path(name), entry.spec))
            fp16[name] = gate_runner(bundle.root, str(entry.fp16_onnx), entry.spec)
            stack.callback(fp16[name].deactivate)
        end_to_end = {"fp16": chunk0_gate(chunk0_frames(staged, fp16, pictures), chunk0_frames(staged, fp32, pictures),
                                          gate)}
    warnings = gate_warnings({}, end_to_end, gate)
    report = {"executed_with": EXECUTED_WITH, "frames": f"{frames} synthetic (parity) frames",
              "overflow": "not scanned: it needs calibration episodes (build with --int8)", "fp32_kept": kept,
              "end_to_end": end_to_end, "warnings": warnings}
    return DeviceGraphs(fallback(updated, {}, end_to_end), report, warnings)


def chunk0_frames(bundle: Bundle, runners: Mapping[str, OnnxRuntimeRunner], frames: Sequence[np.ndarray]) -> np.ndarray:
    """chunk[0] of `frames` (one episode) through the runtime pipeline with `runners`."""
    from runtime.backends.onnxruntime import OnnxRuntimeBackend
    from runtime.pipeline import PolicyPipeline

    backend = OnnxRuntimeBackend(bundle, runners)
    backend.activate()
    pipeline = PolicyPipeline(bundle, backend)
    return np.stack([pipeline.step(frame).velocity.copy() for frame in frames])


def device_markdown(report: Mapping[str, Any]) -> list[str]:
    """The device graphs' section of the accuracy (or build) report: layers, what stays FP32, gate, overflow."""
    lines = ["## Device graphs (FP16-typed; what the strongly typed TensorRT engines run)", "",
             f"Executed on the CPU with {report['executed_with']}.", "",
             "| part | FP16 engine layers | INT8 engine layers | FP32 on purpose |", "|---|---|---|---|"]
    for name, kept in report["fp32_kept"].items():
        layers = kept["layers"]
        int8 = summary(layers["int8"]) if "int8" in layers else "—"
        lines.append(f"| {name} | {summary(layers['fp16'])} | {int8} | {'; '.join(kept['why']) or 'nothing'} |")
    lines += ["", "| run | chunk[0] MAE | max abs err | sign agreement | gate |", "|---|---|---|---|---|"]
    for label, result in report["end_to_end"].items():
        lines.append(f"| {label} vs FP32 | {result['mae']:.5f} | {result['max_abs_err']:.5f} | "
                     f"{result['sign_agreement']:.2%} | {'pass' if result['passed'] else 'FAIL'} |")
    lines.append("")
    for name, runs in report.get("parts", {}).items():
        cosines = ", ".join(f"{label} cosine {r['cosine_mean']:.6f}" for label, r in runs.items())
        lines.append(f"- {name}: {cosines}")
    overflow = report["overflow"]
    if isinstance(overflow, str):
        lines += ["", f"Overflow report: {overflow}."]
    else:
        lines += ["", f"Overflow report (largest |activation| over the calibration frames, FP32 run; flagged within "
                      f"{OVERFLOW_MARGIN:g}x of {FP16_MAX:g}):", ""]
        for name, part in overflow.items():
            largest = next(iter(part["largest"].items()), ("—", 0.0))
            flagged = ", ".join(f"{node} ({peak:.3g})" for node, peak in part["flagged"].items()) or "none"
            lines.append(f"- {name}: largest {largest[0]} = {largest[1]:.4g}; flagged: {flagged}; fix: {part['fix']}")
    return [*lines, ""]
