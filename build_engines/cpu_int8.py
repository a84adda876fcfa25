"""`build_engines --int8` for ONNX Runtime: each part's CPU INT8 form, gated like the Q/DQ graph, timed against FP32.

The Q/DQ graphs are what TensorRT needs (quantize.py); ONNX Runtime on the CPU runs them slower than FP32, because
after its optimization no integer kernel remains (docs/design.md §4). The CPU INT8 form, `<part>.cpu-int8.onnx`, is
ONNX Runtime's dynamic quantization of the FP32 part: int8 weights per output channel, activations quantized to
uint8 at run time, on the weight MatMuls and Gemms. ONNX Runtime fuses those into integer kernels
(`DynamicQuantizeMatMul`, `MatMulIntegerToFloat`: u8×s8, VNNI where the CPU has it; an x86 CPU without VNNI
clips int8 weights' sums, so it gets uint8 weights, build_engines/cpu_quantize.py). As in the Q/DQ graphs,
attention's activation×activation MatMuls and the `--keep-float` nodes (the image-to-text projection) stay float,
and so does the LSTM. Measured (docs/int8.md): with AVX-512 VNNI, int8 weights run 1.6-2x faster than uint8 weights on
the mid preset; per-tensor weights are a little faster than per-channel but lose accuracy; quantizing the LSTM
(`DynamicQuantizeLSTM`) halves the head's few milliseconds but, with the trunk's form, breaks the demo's
end-to-end sign agreement (95% < 98%), and so does quantizing the projection.

Per part: quantize; count the integer kernels left in ONNX Runtime's optimized graph; gate (per-part cosine against
FP32 on the held-out frames, `int8.part_gate`); time FP32 against CPU INT8 (`CpuSpeed`: medians of interleaved
runs, the same sessions and threads). Then the end-to-end gate (`int8.end_to_end_gate`) runs the held-out episodes
with the forms `--precision auto` will run (gated and faster), the weakest falling back first; and once more with
the gated forms that are not faster added (what `--precision int8` runs), which are dropped together if they break
it. A form that fails a gate keeps FP32 on the CPU: its file is removed and the manifest warns. A form that passes
but is not faster stays in the bundle for `--precision int8`; the report notes that `auto` keeps FP32 there. The
forms and their measurements go into the manifest (`PartEntry.cpu_int8`), the figures into the accuracy report
(`cpu_int8`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from build_engines.cpu_quantize import CpuInt8Settings, integer_kernels, quantize_cpu_part
from build_engines.int8 import (
    Int8Options,
    Int8Result,
    PartGate,
    Quantizer,
    chunk0_episodes,
    end_to_end_gate,
    external_file,
    gate_refs,
    part_gate,
    scan_dataset,
)
from calibration.cascade import Feed, load_frames
from calibration.sampling import split_episodes
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.bundle import Bundle, PartEntry
from runtime.cpu_int8 import CPU_INT8_SUFFIX, MIN_CPU_SPEEDUP, CpuHost, CpuInt8Form, CpuSpeed, cpu_host
from runtime.errors import MobileVLAError

log = logging.getLogger("build_engines.cpu_int8")


@dataclass
class CpuPart:
    """One part's CPU INT8 form as built: file, integer kernels, gate, speed, and whether it is kept."""

    onnx: str
    external_data: str | None
    integer_kernels: dict[str, int]
    gate: PartGate
    speed: CpuSpeed
    quantize_s: float
    size_bytes: int
    kept: bool = False  # passed every gate: in the bundle
    dropped: str | None = None  # why not, when not kept

    @property
    def auto(self) -> bool:
        """What `--precision auto` runs on ONNX Runtime (runtime/backends/onnx_forms.py decides the same way)."""
        return self.kept and self.speed.faster

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "kept": self.kept, "auto": self.auto, "dropped": self.dropped,
                "integer_kernels": self.integer_kernels, "gate": asdict(self.gate), "speed": self.speed.to_dict(),
                "quantize_s": self.quantize_s, "size_bytes": self.size_bytes}


@dataclass
class CpuInt8Result:
    parts: dict[str, PartEntry]
    warnings: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def _timed_run(runner: OnnxRuntimeRunner, feed: Feed) -> float:
    for name, value in feed.items():
        runner.inputs[name][...] = value  # copied in before the clock starts: only the session is timed
    started = time.perf_counter()
    runner.run()
    return (time.perf_counter() - started) * 1e3


def measure_speed(fp32: OnnxRuntimeRunner, int8: OnnxRuntimeRunner, feeds: Sequence[Feed],
                  settings: CpuInt8Settings, host: CpuHost) -> CpuSpeed:
    """Median latency of both runners over interleaved runs on the same feeds (alternating which goes first, so
    drift and cache effects fall on both alike)."""
    if not feeds:
        raise RuntimeError("bug: no feeds to time the CPU INT8 form on")
    for _ in range(settings.timing_warmup):
        _timed_run(fp32, feeds[0])
        _timed_run(int8, feeds[0])
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    started = time.perf_counter()
    pair = 0
    while True:
        elapsed = time.perf_counter() - started
        if pair >= settings.timing_min_runs and elapsed >= settings.timing_budget_s:
            break
        if pair >= settings.timing_runs and elapsed >= settings.timing_min_s:
            break
        feed = feeds[pair % len(feeds)]
        order = ("fp32", "int8") if pair % 2 == 0 else ("int8", "fp32")
        for which in order:
            times[which].append(_timed_run(fp32 if which == "fp32" else int8, feed))
        pair += 1
    return CpuSpeed(statistics.median(times["fp32"]), statistics.median(times["int8"]), pair, fp32.threads, host,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))


def remove_form(root: Path, part: CpuPart, why: str) -> None:
    part.kept, part.dropped = False, why
    for name in (part.onnx, part.external_data):
        if name is not None:
            (root / name).unlink(missing_ok=True)


def build_part(q: Quantizer, name: str, feeds: Sequence[Feed], settings: CpuInt8Settings, host: CpuHost,
               threshold: float) -> CpuPart:
    """Quantize, count integer kernels, gate and time one part; its runner becomes `q.int8[name]`."""
    bundle = q.bundle
    entry = bundle.manifest.parts[name]
    onnx_name = f"{name}{CPU_INT8_SUFFIX}"
    target = bundle.root / onnx_name
    with q.sessions_released():  # the quantizer loads the part and writes its copy: real size, gigabytes each
        seconds = quantize_cpu_part(bundle.part_path(name), target, settings, entry.external_data is not None,
                                    q.options.quant.exclude, settings.weights_on(host))
        kernels = integer_kernels(target)
    external = external_file(bundle.root, onnx_name)
    q.int8[name] = q.activate(name, target)
    gate = part_gate(q.fp32[name], q.int8[name], feeds, threshold)
    speed = measure_speed(q.fp32[name], q.int8[name], feeds, settings, host)
    size = sum((bundle.root / f).stat().st_size for f in (onnx_name, external) if f)
    log.info("%s CPU INT8: %s; cosine mean %.5f min %.5f over %d held-out samples: %s; %s", name,
             ", ".join(f"{n} {op}" for op, n in kernels.items()) or "NO integer kernels", gate.cosine_mean,
             gate.cosine_min, gate.samples, "passed" if gate.passed else "FAILED", speed.describe())
    return CpuPart(onnx_name, external, kernels, gate, speed, round(seconds, 2), size, kept=gate.passed,
                   dropped=None if gate.passed else f"cosine {gate.cosine_mean:.6f} < {threshold}")


def gate_for(parts: Mapping[str, CpuPart], chosen: Sequence[str]) -> dict[str, PartGate]:
    """The per-part gates as `end_to_end_gate` reads them: only `chosen` parts count as passed (run INT8)."""
    return {name: replace(part.gate, passed=name in chosen) for name, part in parts.items()}


def cpu_int8_bundle(bundle: Bundle, options: Int8Options, settings: CpuInt8Settings | None = None) -> CpuInt8Result:
    """Write `<part>.cpu-int8.onnx` beside each FP32 part of a staged bundle, gate and time them; returns the parts
    with `cpu_int8` set where the form is kept, the warnings, and the report block."""
    settings = settings or CpuInt8Settings()
    settings.validate()
    options.validate()
    started = time.perf_counter()
    manifest = bundle.manifest
    scan = scan_dataset(options, manifest.policy.window)
    split = split_episodes(scan.episodes, options.sample)  # the same split, held-out frames and episodes as int8.py
    held_refs = gate_refs(split.held_out, options.gate.part_frames, options.sample.seed)
    held_frames = load_frames(held_refs, options.color, manifest.preprocessing, manifest.policy.window)
    host = cpu_host()
    if settings.weight_type == "auto" and host.saturates_int8:
        log.info("CPU INT8 forms get uint8 weights: this CPU has no VNNI and its integer kernels clip int8 ones")
    warnings: list[str] = []
    parts: dict[str, CpuPart] = {}
    e2e: dict[str, Any] = {}
    with ExitStack() as stack:
        q = Quantizer(bundle, options, stack)
        for name in q.names:
            feeds = q.calibration_feeds(name, held_refs, held_frames, q.fp32)  # FP32 upstream, as int8.py gates
            parts[name] = build_part(q, name, feeds, settings, host, options.gate.cosine)
            if not parts[name].kept:
                q.int8.pop(name).deactivate()  # its file goes: no later reopening (sessions_released) may find it
                remove_form(bundle.root, parts[name], "per-part gate")
                warnings.append(f"{name}: CPU INT8 cosine {parts[name].gate.cosine_mean:.6f} < {options.gate.cosine} "
                                f"on held-out frames; ONNX Runtime keeps FP32 for this part")
        auto = [n for n in q.names if parts[n].kept and parts[n].speed.faster]
        extra = [n for n in q.names if parts[n].kept and not parts[n].speed.faster]
        # A speed outcome, not an accuracy problem: in the report and the log; the runtime logs it again per run
        notes = [f"{n}: CPU INT8 is not faster than FP32 here ({parts[n].speed.speedup:.2f}x < {MIN_CPU_SPEEDUP:g}x); "
                 f"--precision auto keeps FP32 for this part on ONNX Runtime" for n in extra]
        for note in notes:
            log.info("%s", note)
        if auto or extra:
            reference = chunk0_episodes(bundle, q.fp32, split.held_out, options.color, "gate: FP32 episodes")
        if auto:
            e2e["auto"], fallbacks = end_to_end_gate(bundle, q, gate_for(parts, auto), reference, split.held_out,
                                                     options)
            for n in fallbacks:
                remove_form(bundle.root, parts[n], "end-to-end gate")
                warnings.append(f"{n}: CPU INT8 dropped to meet the end-to-end gate; ONNX Runtime keeps FP32 here")
            if not e2e["auto"]["passed"]:
                for n in e2e["auto"]["int8_parts"]:  # `--on-gate-failure stop`: no fallback was tried
                    remove_form(bundle.root, parts[n], "end-to-end gate")
                warnings.append(end_to_end_warning(e2e["auto"], options))
        if extra:
            kept = [n for n in q.names if parts[n].kept]
            once = replace(options, gate=replace(options.gate, on_failure="stop"))  # one run, no fallback
            e2e["int8"], _ = end_to_end_gate(bundle, q, gate_for(parts, kept), reference, split.held_out, once)
            if not e2e["int8"]["passed"]:
                for n in extra:
                    remove_form(bundle.root, parts[n], "end-to-end gate with --precision int8's forms")
                warnings.append(end_to_end_warning(e2e["int8"], options) + f"; dropped the CPU INT8 forms of "
                                f"{', '.join(extra)} (not faster, and they break the gate)")
    if options.gate.on_failure == "stop" and any(not p.kept for p in parts.values()):
        raise MobileVLAError(
            "the CPU INT8 accuracy gate failed: " + "; ".join(warnings) + ". No bundle was written. Pass "
            "--on-gate-failure fallback to keep the failing parts at FP32 on ONNX Runtime"
        )
    for warning in warnings:
        log.warning("%s", warning)
    weights = settings.weights_on(host)
    entries = {name: replace(manifest.parts[name], cpu_int8=CpuInt8Form(p.onnx, p.external_data, p.speed,
                                                                        weights) if p.kept else None)
               for name, p in parts.items()}
    report = cpu_report(parts, e2e, settings, host, warnings, notes, time.perf_counter() - started)
    return CpuInt8Result(entries, warnings, report)


def end_to_end_warning(result: Mapping[str, Any], options: Int8Options) -> str:
    return (f"CPU INT8 end-to-end gate failed: chunk[0] MAE {result['mae']:.4f} (limit {options.gate.mae}), sign "
            f"agreement {result['sign_agreement']:.1%} (limit {options.gate.sign_agreement:.0%}) with CPU INT8 parts "
            f"{result['int8_parts'] or 'none'}")


def cpu_report(parts: Mapping[str, CpuPart], e2e: Mapping[str, Any], settings: CpuInt8Settings, host: CpuHost,
               warnings: Sequence[str], notes: Sequence[str], seconds: float) -> dict[str, Any]:
    """The accuracy report's `cpu_int8` block. `policy_ms` sums the parts' medians (the runtime's --benchmark
    measures the whole loop)."""
    fp32 = sum(p.speed.fp32_ms for p in parts.values())
    auto = sum(p.speed.int8_ms if p.auto else p.speed.fp32_ms for p in parts.values())
    int8 = sum(p.speed.int8_ms if p.kept else p.speed.fp32_ms for p in parts.values())
    return {
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "settings": asdict(settings),
        "weight_type": settings.weights_on(host),
        "host": host.to_dict(),
        "min_speedup": MIN_CPU_SPEEDUP,
        "parts": {name: part.to_dict() for name, part in parts.items()},
        "end_to_end": dict(e2e),
        "onnxruntime_precision": {"auto": {n: "cpu-int8" if p.auto else "fp32" for n, p in parts.items()},
                                  "int8": {n: "cpu-int8" if p.kept else "Q/DQ or fp32" for n, p in parts.items()}},
        "policy_ms": {"fp32": round(fp32, 2), "auto": round(auto, 2), "int8": round(int8, 2),
                      "auto_speedup": round(fp32 / auto, 3), "int8_speedup": round(fp32 / int8, 3)},
        "warnings": list(warnings),
        "notes": list(notes),
        "seconds": round(seconds, 1),
    }


def with_cpu_int8(int8: Int8Result, cpu: CpuInt8Result) -> Int8Result:
    """The TensorRT INT8 result with the CPU INT8 forms added: parts, warnings, and the report's `cpu_int8`."""
    parts = {name: replace(entry, cpu_int8=cpu.parts[name].cpu_int8) for name, entry in int8.parts.items()}
    return Int8Result(parts, int8.warnings + cpu.warnings, {**int8.report, "cpu_int8": cpu.report})
