"""TensorRT engines as the bundle records them (pure functions of the manifest and this machine, tested without
TensorRT): which engine a part runs, whether it fits this TensorRT and GPU, whether its I/O matches the part spec.

`probe` says, in one line, why TensorRT cannot run a bundle here (missing TensorRT/pycuda/GPU, engines not built,
engines built for another TensorRT or GPU) and what to run; it is asked once per run (`runtime/backends/select.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends.cuda import DeviceInfo, cuda_device, device_command, import_pycuda, import_tensorrt
from runtime.bundle import Bundle, PartEntry
from runtime.errors import MobileVLAError
from runtime.specs import PartSpec, TensorSpec

if TYPE_CHECKING:  # type-checked against tensorrt-stubs; imported lazily at run time
    import tensorrt as trt

TENSORRT_PRECISIONS = ("fp16", "int8")
# Engine dtypes accepted for a manifest dtype: TensorRT 8.x casts int64 network inputs to int32.
ENGINE_DTYPES: dict[str, tuple[str, ...]] = {"int64": ("int64", "int32")}


def engine_precision(entry: PartEntry, precision: str) -> str:
    """The engine a part runs for `precision`: int8 where the part passed the INT8 gate, fp16 elsewhere."""
    return "int8" if precision == "int8" and entry.precision == "int8" and entry.int8_onnx else "fp16"


def engine_mismatch(record: dict[str, Any], version: str, device: DeviceInfo) -> str | None:
    """Why an engine record does not fit this TensorRT and GPU (engines are tied to both), or None."""
    built = (str(record.get("tensorrt")), str(record.get("device")), str(record.get("compute_capability")))
    if built == (version, device.name, device.compute_capability):
        return None
    return (f"was built for TensorRT {built[0]} on {built[1]} (sm {built[2]}) but this machine has TensorRT {version} "
            f"on {device.name} (sm {device.compute_capability})")


def engines_unavailable_reason(bundle: Bundle, precision: str, version: str, device: DeviceInfo) -> str | None:
    """None when every part has a current engine file for `precision`, else the first problem and its fix."""
    root = bundle.root
    for name, entry in bundle.manifest.parts.items():
        wanted = engine_precision(entry, precision)
        record = entry.engines.get(wanted)
        if not record:
            return (f"engines not built: the {name} part has no {wanted} TensorRT engine; build them on this device: "
                    f"`{device_command(root)}`")
        mismatch = engine_mismatch(record, version, device)
        if mismatch:
            return f"the {name} {wanted} engine {mismatch}: rebuild on this device with `{device_command(root)}`"
        path = bundle.path(str(record["file"]))
        if not path.is_file():
            return f"engine file {record['file']} is missing: copy the bundle again or run `{device_command(root)}`"
        size = path.stat().st_size
        if size != int(record["size_bytes"]):
            return (f"engine file {record['file']} has {size} bytes, the manifest says {record['size_bytes']}: copy "
                    f"the bundle again or run `{device_command(root, force=True)}`")
    return None


@dataclass(frozen=True)
class TensorRTProbe:
    reason: str | None  # why TensorRT cannot run the bundle here, with the fix; None: it can
    version: str = ""  # the TensorRT found, when it can


def probe(bundle: Bundle, precision: str) -> TensorRTProbe:
    """Whether TensorRT can run `bundle` at `precision` on this machine, else a one-line reason with the fix."""
    if precision not in TENSORRT_PRECISIONS:
        return TensorRTProbe(f"TensorRT runs {' or '.join(TENSORRT_PRECISIONS)} engines, not {precision}")
    trt_module = import_tensorrt()
    if trt_module is None:
        return TensorRTProbe("TensorRT is not installed (no `tensorrt` Python module; on a Jetson it comes with "
                             "JetPack, see docs/jetson.md)")
    if import_pycuda() is None:
        return TensorRTProbe("pycuda is not installed: `pip install pycuda` with CUDA's nvcc on PATH (see "
                             "docs/jetson.md)")
    try:
        device = cuda_device()
    except MobileVLAError as exc:
        return TensorRTProbe(str(exc))
    version = str(trt_module.__version__)
    return TensorRTProbe(engines_unavailable_reason(bundle, precision, version, device), version)


@dataclass(frozen=True)
class EngineTensor:
    """One engine I/O tensor as TensorRT reports it."""

    name: str
    is_input: bool
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]
    on_device: bool = True

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        where = "" if self.on_device else " on the host"
        return f"{'input' if self.is_input else 'output'} {self.dtype}{list(self.shape)}{where}"


def describe_spec(spec: TensorSpec, is_input: bool) -> str:
    return f"{'input' if is_input else 'output'} {spec.dtype}{list(spec.shape)}"


def check_engine_io(path: Path, spec: PartSpec, tensors: dict[str, EngineTensor], rebuild: str) -> None:
    """Refuse an engine whose I/O names, directions, dtypes or shapes differ from the manifest's part spec."""
    expected = {t.name: (t, True) for t in spec.inputs} | {t.name: (t, False) for t in spec.outputs}
    if set(tensors) != set(expected):
        raise MobileVLAError(
            f"{path} has I/O tensors {sorted(tensors)}; the manifest's {spec.name} part has {sorted(expected)}. The "
            f"engine was built from another bundle: rebuild it with `{rebuild}`"
        )
    for name, (wanted, is_input) in expected.items():
        got = tensors[name]
        dtypes = ENGINE_DTYPES.get(wanted.dtype, (wanted.dtype,))
        if got.is_input != is_input or got.dtype not in dtypes or got.shape != wanted.shape or not got.on_device:
            raise MobileVLAError(
                f"{path}: tensor {name} is {got.describe()}; the manifest's {spec.name} part expects "
                f"{describe_spec(wanted, is_input)} (static shapes, on the device). Rebuild the engine with `{rebuild}`"
            )


def read_engine_tensors(engine: trt.ICudaEngine) -> dict[str, EngineTensor]:
    """The engine's I/O through the name-based API (TensorRT >= 8.5)."""
    import tensorrt as trt

    tensors: dict[str, EngineTensor] = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        data_type = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(data_type)).name
        except TypeError:  # bf16/fp8/int4 have no numpy type: named so the I/O check reports it
            dtype = str(data_type)
        dims = engine.get_tensor_shape(name)
        tensors[name] = EngineTensor(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            dtype=dtype,
            shape=tuple(int(dims[i]) for i in range(len(dims))),
            on_device=engine.get_tensor_location(name) == trt.TensorLocation.DEVICE,
        )
    return tensors


@dataclass(frozen=True)
class EngineChoice:
    """The engine a part runs: its file and what the manifest records of it."""

    part: str
    precision: str
    path: Path
    sha256: str
    size_bytes: int


def engine_choices(bundle: Bundle, precision: str) -> dict[str, EngineChoice]:
    choices: dict[str, EngineChoice] = {}
    for name, entry in bundle.manifest.parts.items():
        wanted = engine_precision(entry, precision)
        record = entry.engines[wanted]
        choices[name] = EngineChoice(name, wanted, bundle.path(str(record["file"])), str(record["sha256"]),
                                     int(record["size_bytes"]))
    return choices
