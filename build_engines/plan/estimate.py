"""Floor latency and memory per part, precision and device (docs/design.md §4).

- Floor latency of a part = max(FLOPs / peak tensor throughput, bytes moved / bandwidth). Bytes moved = the weights,
  read once per frame (they are far larger than the 2-4 MB L2), and the part's inputs and outputs; activations
  between ops are taken to stay on chip or be fused away (TensorRT fuses attention and pointwise ops), so the floor
  stays a lower bound. Their unfused traffic is reported beside it (PartBytes.activations). In the INT8 engine the
  FLOPs of INT8-weight MatMul/Gemm run at the INT8 peak, the rest (attention products, LSTM, conv, kept-float layers)
  at the FP16 peak. A frame runs the three parts one after the other: its floor is their sum.
- Precisions: fp16 = every weight and activation FP16; int8 = INT8 MatMul/Gemm weights (and their activation inputs),
  everything else FP16: the FP16-typed Q/DQ graph of docs/design.md §4. (A Q/DQ graph whose float parts are FP32 runs
  them in FP32: slower than this floor.)
- Run time memory = the three engines (≈ their weights) + each execution context's activations + the runtime
  process; start-up adds the largest engine once more (the runtime reads a plan file into memory to deserialize it).
- Build time memory, one part at a time (tensorrt_build.py): the parsed network (the ONNX's weights at its own
  precision) + the engine being built + its serialized copy written out (2 x engine) + the builder + the workspace
  pool (counted in full: TensorRT may take all of it for tactic timing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from build_engines.plan.devices import (
    BUILDER_GIB,
    CARVEOUT_GIB,
    CUDA_TENSORRT_RUNTIME_GIB,
    GIB,
    OS_DESKTOP_GIB,
    OS_HEADLESS_GIB,
    RUNTIME_PYTHON_GIB,
    Device,
)
from build_engines.plan.model import PartCount
from build_engines.tensorrt_build import MIN_WORKSPACE, WORKSPACE_SHARE  # imports no TensorRT, torch or onnx

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_PRECISIONS = ("fp16", "int8")
# (engine precision, the ONNX the builder parses: the precision its weights are stored at)
BUILD_FORMS = {  # tensorrt_build.py: the typed graphs where the bundle has them, else the FP32 ones
    "fp16_from_fp32_onnx": ("fp16", "fp32"),  # the FP32 ONNX with the FP16 builder flag
    "fp16_from_fp16_onnx": ("fp16", "fp16"),  # the FP16-typed NAME.fp16.onnx (build_engines/fp16.py)
    "int8_from_qdq_onnx": ("int8", "int8"),  # NAME.int8.fp16.onnx: INT8 MatMul/Gemm weights, FP16 elsewhere
}
MIN_WORKSPACE_MB = MIN_WORKSPACE >> 20


def float_size(precision: str) -> int:
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class PartBytes:
    """One part at one precision."""

    weights: int  # the engine's (≈ the ONNX's) weight bytes
    weights_read: int  # weight bytes read per frame
    io: int  # the part's input and output bytes
    activations: int  # activation bytes the counted ops would read + write per frame, unfused
    activation_peak: int  # the largest counted op's inputs + output

    @property
    def moved(self) -> int:
        """What the floor counts: weights and I/O."""
        return self.weights_read + self.io


def part_bytes(part: PartCount, precision: str) -> PartBytes:
    fsize = float_size(precision)
    qsize = 1 if precision == "int8" else fsize
    weights = sum(op.count * (op.quantized * qsize + op.float_weights * fsize) for op in part.ops)
    stored = sum(c.elements * (c.itemsize or fsize) for c in part.consts)
    read = sum(c.read * (c.itemsize or fsize) for c in part.consts)
    acts = sum(op.count * (op.act_in * (qsize if op.quantized else fsize) + op.act_out * fsize) for op in part.ops)
    peak = max(((op.act_in + op.act_out) * fsize for op in part.ops), default=0)
    return PartBytes(weights + stored, weights + read, part.io_bytes, acts, peak)


@dataclass(frozen=True)
class Floor:
    compute_ms: float
    memory_ms: float

    @property
    def ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def part_floor(part: PartCount, precision: str, device: Device) -> Floor:
    int8_flops = part.int8_flops if precision == "int8" else 0
    compute = int8_flops / device.peak_ops("int8") + (part.flops - int8_flops) / device.peak_ops("fp16")
    memory = part_bytes(part, precision).moved / (device.bandwidth_gbs * 1e9)
    return Floor(compute * 1e3, memory * 1e3)


def frame_bound(floors: dict[str, Floor]) -> str:
    """The bound that accounts for most of the frame's floor (parts run one after the other)."""
    memory = sum(f.ms for f in floors.values() if f.bound == "memory")
    return "memory" if memory >= sum(f.ms for f in floors.values()) - memory else "compute"


@dataclass(frozen=True)
class Fit:
    need_bytes: int
    usable_bytes: int
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.usable_bytes


def usable_bytes(device: Device, headless: bool = False) -> int:
    """RAM left for our process: total less firmware carve-outs and the OS (desktop JetPack unless headless)."""
    return int((device.ram_gib - CARVEOUT_GIB - (OS_HEADLESS_GIB if headless else OS_DESKTOP_GIB)) * GIB)


def steady_bytes(fit: Fit) -> int:
    """Run time after start-up: the plan file read for deserializing is gone."""
    return fit.need_bytes - fit.detail.get("startup_extra", 0)


def run_fit(parts: dict[str, PartCount], precision: str, device: Device) -> Fit:
    figures = [part_bytes(p, precision) for p in parts.values()]
    engines = sum(f.weights for f in figures)
    detail = {"engines": engines, "activations": sum(f.activation_peak for f in figures),
              "runtime_process": int((RUNTIME_PYTHON_GIB + CUDA_TENSORRT_RUNTIME_GIB) * GIB)}
    detail["startup_extra"] = max(f.weights for f in figures)
    steady = detail["engines"] + detail["activations"] + detail["runtime_process"]
    return Fit(steady + detail["startup_extra"], usable_bytes(device), detail)


def workspace_bytes(device: Device, workspace_mb: int | None) -> int:
    """The pool tensorrt_build.workspace_limit sets (without its log line): --workspace-mb capped at half the
    available memory, else that half."""
    cap = max(MIN_WORKSPACE, int(usable_bytes(device) * WORKSPACE_SHARE))
    return cap if workspace_mb is None else min(workspace_mb << 20, cap)


def build_fit(part: PartCount, form: str, device: Device, workspace_mb: int | None) -> Fit:
    engine_precision, onnx_precision = BUILD_FORMS[form]
    engine = part_bytes(part, engine_precision).weights
    detail = {"parsed_onnx": part_bytes(part, onnx_precision).weights, "engine_and_serialized_copy": 2 * engine,
              "builder": int(BUILDER_GIB * GIB), "workspace": workspace_bytes(device, workspace_mb)}
    return Fit(sum(detail.values()), usable_bytes(device), detail)


@dataclass(frozen=True)
class DevicePlan:
    device: Device
    floors: dict[str, dict[str, Floor]]  # precision -> part -> floor
    run: dict[str, Fit]  # precision -> fit
    build: dict[str, tuple[str, Fit]]  # form -> (largest part, its fit)
    warnings: tuple[str, ...]

    def frame_ms(self, precision: str) -> float:
        return sum(f.ms for f in self.floors[precision].values())


def plan_device(parts: dict[str, PartCount], device: Device, workspace_mb: int | None) -> DevicePlan:
    floors = {p: {name: part_floor(part, p, device) for name, part in parts.items()} for p in ENGINE_PRECISIONS}
    run = {p: run_fit(parts, p, device) for p in ENGINE_PRECISIONS}
    build = {}
    for form in BUILD_FORMS:
        fits = {name: build_fit(part, form, device, workspace_mb) for name, part in parts.items()}
        largest = max(fits, key=lambda name: fits[name].need_bytes)
        build[form] = (largest, fits[largest])
    warnings = [*run_warnings(run, device), *build_warnings(parts, build, device, workspace_mb)]
    return DevicePlan(device, floors, run, build, tuple(warnings))


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def run_warnings(run: dict[str, Fit], device: Device) -> list[str]:
    out = []
    for precision, fit in run.items():
        if fit.fits:
            continue
        fixes = []
        if precision == "fp16" and run["int8"].fits:
            fixes.append(f"run the INT8 engines (build_engines --int8): {gib(run['int8'].need_bytes)}")
        if fit.need_bytes <= usable_bytes(device, headless=True):
            fixes.append(f"a headless JetPack (no desktop session) leaves {gib(usable_bytes(device, True))}")
        fixes = fixes or ["none this plan can confirm on this module: use a larger Orin module"]
        out.append(f"{device.name}: the {precision} engines need {gib(fit.need_bytes)} at start-up, "
                   f"{gib(fit.usable_bytes)} is usable. Remedy: {'; or '.join(fixes)}")
    return out


def workspace_advice(fit: Fit, usable: int) -> str | None:
    """'' when `fit` fits in `usable` as is, the --workspace-mb that makes it fit, or None when no workspace does."""
    if fit.need_bytes <= usable:
        return ""
    room_mb = (usable - (fit.need_bytes - fit.detail["workspace"])) >> 20
    return f" with --workspace-mb {room_mb // 256 * 256}" if room_mb >= MIN_WORKSPACE_MB else None


def build_warnings(parts: dict[str, PartCount], build: dict[str, tuple[str, Fit]], device: Device,
                   workspace_mb: int | None) -> list[str]:
    out = []
    for form, (name, fit) in build.items():
        if fit.fits:
            continue
        alternatives = [(form, "cap the workspace")]
        if form == "fp16_from_fp32_onnx":
            alternatives.append(("fp16_from_fp16_onnx", "parse the FP16-typed NAME.fp16.onnx instead of the FP32 ONNX "
                                                        "(rebuild the bundle with this build_engines)"))
        if form != "int8_from_qdq_onnx":
            alternatives.append(("int8_from_qdq_onnx", "build the INT8 engine instead (build_engines --int8)"))
        fixes = []
        for usable, where in ((fit.usable_bytes, ""), (usable_bytes(device, headless=True), " on a headless JetPack")):
            for alt, what in alternatives:
                candidate = fit if alt == form else build_fit(parts[name], alt, device, workspace_mb)
                advice = workspace_advice(candidate, usable)
                if advice is not None and (alt != form or advice):
                    fixes.append(f"{what}{advice}{where}")
            if fixes:
                break
        if not fixes:
            # Host-side copies (the parsed ONNX, the serialized engine) can be paged out; GPU allocations cannot.
            lowest = fit.need_bytes - fit.detail["workspace"] + (MIN_WORKSPACE_MB << 20)
            swappable = fit.detail["parsed_onnx"] + fit.detail["engine_and_serialized_copy"] // 2
            resident, headless = lowest - swappable, usable_bytes(device, headless=True)
            fixes.append(f"none fits in RAM: even {gib(lowest)} (workspace {MIN_WORKSPACE_MB} MB, headless) exceeds "
                         f"{gib(headless)}. Swap on NVMe could take the {gib(swappable)} of host-side copies (parsed "
                         f"ONNX, serialized engine), leaving {gib(resident)} resident: "
                         + ("that may build, slowly" if resident <= headless else "still too much"))
        out.append(f"{device.name}: building the {name} engine {FORM_LABELS[form]} needs {gib(fit.need_bytes)}, "
                   f"{gib(fit.usable_bytes)} is usable. Remedy: {'; or '.join(fixes)}")
    return out


FORM_LABELS = {
    "fp16_from_fp32_onnx": "(FP16 from the FP32 ONNX: a bundle without NAME.fp16.onnx)",
    "fp16_from_fp16_onnx": "(FP16 from the FP16-typed NAME.fp16.onnx)",
    "int8_from_qdq_onnx": "(INT8 from the FP16-typed Q/DQ NAME.int8.fp16.onnx)",
}
