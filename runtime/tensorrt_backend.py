"""The TensorRT backend (docs/design.md §3, §4, §6): the bundle's engines through pycuda, one stream, the history on
the GPU.

Per frame, all on one CUDA stream, then one synchronize:

    [shift history] -> H2D frame (pinned) -> vision -> trunk -> head -> D2H actions (pinned)

- Name-based I/O only (`num_io_tensors`, `get_tensor_name`, `set_tensor_address`, `execute_async_v3`): TensorRT
  >= 8.5, so the same code serves TensorRT 10.3 (JetPack 6.1/6.2) and 8.5/8.6 (see docs/jetson.md for JetPack 5's
  Python 3.8 bindings). TensorRT 8.x has no INT64 I/O (its ONNX parser makes int64 inputs int32); the runner accepts
  that and converts on upload.
- Vision's output buffer is bound as the trunk's input; the trunk writes its feature straight into the head's
  `features` buffer, which *is* the history `(1, window, D)`; `history_len` lives on the device too. Text inputs are
  uploaded once per instruction (`set_text`), never per frame.
- History rule (docs/design.md §2.3, `runtime/specs.py`): the features of the last min(t, window) frames,
  left-aligned, zero rows past history_len. While filling, the trunk's output address is slot t; once full, the
  window is shifted left by one row on the device (through a scratch buffer: overlapping cuMemcpy is undefined)
  and the trunk writes the last slot. `history_plan` is that rule as a pure function.
- Steady state (window full) has fixed addresses, so after one plain warm-up frame (TensorRT: enqueue once before
  capturing, to flush deferred updates) the whole frame (shift, H2D, three `execute_async_v3`, D2H and the stage
  events) is captured as one CUDA graph and replayed every frame. Capture goes through the CUDA driver (ctypes,
  `runtime/cuda_support.py`): released pycuda has no graph API. If capture fails (TensorRT refuses, or the driver
  lacks the calls) the backend logs once and keeps plain enqueues; `graph` and `name` say which path runs.
  `reset()` drops the graph: the refill phase enqueues with changing addresses, and the graph is captured again
  once the window is full.
- `stage_ms` comes from CUDA events recorded between the stages, on both paths: inside a graph they are external
  event-record nodes (CUDA >= 11.1), replayed with the graph. vision = shift + H2D + vision; head = head + D2H.
- Every TensorRT status and CUDA call is checked (`check_status`, `cuda_call`).

`tensorrt_unavailable_reason` says, in one line, why TensorRT cannot run a bundle here (missing TensorRT/pycuda/GPU,
engines not built, engines built for another TensorRT or GPU) and what to run; `choose_backend` picks the backend
(`auto`: TensorRT where it can run, else ONNX Runtime) and logs the choice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime import cuda_support
from runtime.backend import MODEL_STAGES, BackendOutputs
from runtime.bundle import Bundle, PartEntry
from runtime.config import BACKENDS
from runtime.cuda_support import (
    CUDA_SUCCESS,
    CudaError,
    DeviceInfo,
    PrimaryContext,
    check_status,
    cuda_call,
    cuda_device,
    device_command,
    import_pycuda,
    import_tensorrt,
)
from runtime.errors import MobileVLAError
from runtime.prompt import TextInputs
from runtime.runners import Activated
from runtime.specs import PartSpec, TensorSpec

if TYPE_CHECKING:  # type-checked against tensorrt-stubs; imported lazily at run time
    import tensorrt as trt

    from runtime.backend import PolicyBackend
    from runtime.runners import Runner

log = logging.getLogger("runtime.tensorrt")

TENSORRT_PRECISIONS = ("fp16", "int8")
# NvInferRuntime.h, IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment."
TENSOR_ALIGNMENT = 256
# Engine dtypes accepted for a manifest dtype: TensorRT 8.x casts int64 network inputs to int32.
ENGINE_DTYPES: dict[str, tuple[str, ...]] = {"int64": ("int64", "int32")}
EVENTS = 4  # start, after vision, after trunk, after head


# --- engine choice and compatibility (pure functions of the manifest, tested without TensorRT) ---


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


def tensorrt_unavailable_reason(bundle: Bundle, precision: str) -> str | None:
    """None when TensorRT can run `bundle` at `precision` on this machine, else a one-line reason with the fix."""
    if precision not in TENSORRT_PRECISIONS:
        return f"TensorRT runs {' or '.join(TENSORRT_PRECISIONS)} engines, not {precision}"
    trt_module = import_tensorrt()
    if trt_module is None:
        return ("TensorRT is not installed (no `tensorrt` Python module; on a Jetson it comes with JetPack, see "
                "docs/jetson.md)")
    if import_pycuda() is None:
        return "pycuda is not installed: `pip install pycuda` with CUDA's nvcc on PATH (see docs/jetson.md)"
    try:
        device = cuda_device()
    except MobileVLAError as exc:
        return str(exc)
    return engines_unavailable_reason(bundle, precision, str(trt_module.__version__), device)


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # tensorrt | onnxruntime
    reason: str  # why, for the log and the benchmark report


def choose_backend(requested: str, bundle: Bundle, precision: str) -> BackendChoice:
    """`--backend auto|tensorrt|onnxruntime`: auto takes TensorRT where it can run this bundle; the choice is logged.

    `precision` is the TensorRT precision (fp16 | int8). `tensorrt` refuses with the reason when it cannot run.
    """
    if requested not in BACKENDS:
        raise MobileVLAError(f"--backend {requested!r} is not one of {BACKENDS}")
    if requested == "onnxruntime":
        choice = BackendChoice("onnxruntime", "asked for with --backend onnxruntime")
    else:
        reason = tensorrt_unavailable_reason(bundle, precision)
        if requested == "tensorrt" and reason is not None:
            raise MobileVLAError(f"--backend tensorrt cannot run bundle {bundle.root}: {reason}")
        if reason is None:
            asked = "--backend tensorrt" if requested == "tensorrt" else "auto"
            choice = BackendChoice("tensorrt", f"{asked}: the bundle's {precision} engines match this TensorRT and GPU")
        else:
            choice = BackendChoice("onnxruntime", f"auto: TensorRT unavailable: {reason}")
    log.info("backend %s (%s)", choice.backend, choice.reason)
    return choice


# --- engine I/O against the manifest ---


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


# --- the history rule as a pure function ---


@dataclass(frozen=True)
class HistoryPlan:
    write_slot: int  # the history row this frame's feature goes to
    shift: bool  # first move rows 1.. to 0.. (the window is full; the oldest frame drops out)
    new_len: int  # the head's history_len for this frame

    @property
    def steady(self) -> bool:
        """Fixed addresses every frame: the state a CUDA graph is captured in."""
        return self.shift


def history_plan(history_len: int, window: int) -> HistoryPlan:
    """Where this frame's feature goes, given the frames already in the window (docs/design.md §2.3)."""
    if not 0 <= history_len <= window or window < 1:
        raise ValueError(f"history_len {history_len} outside 0..{window}")
    if history_len < window:
        return HistoryPlan(write_slot=history_len, shift=False, new_len=history_len + 1)
    return HistoryPlan(write_slot=window - 1, shift=True, new_len=window)


def direct_history_writes(row_bytes: int) -> bool:
    """Whether the trunk can write into a history row: every row address must meet TensorRT's alignment."""
    return row_bytes % TENSOR_ALIGNMENT == 0


# --- TensorRT logging ---


@functools.cache
def runtime_logger() -> trt.ILogger:
    """One TensorRT logger for the process (it must outlive every runtime and engine made with it).

    Forwards to Python logging and keeps the last errors, so a failed call's exception can quote them.
    """
    import tensorrt as trt

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: deque[str] = deque(maxlen=4)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return ForwardingLogger()


def recent_tensorrt_errors() -> str:
    errors = getattr(runtime_logger(), "errors", ()) if import_tensorrt() is not None else ()
    return " | ".join(errors) or "no TensorRT error logged"


def release_after_failure(release: Callable[[], None]) -> None:
    """Free what a failed activation got; a CUDA error while doing so is logged, the original error propagates."""
    try:
        release()
    except CudaError as exc:
        log.warning("while cleaning up after a failed activation: %s", exc)


# --- one engine ---


class TensorRTRunner(Activated):
    """Runs one bundle part's engine (`runtime.runners.Runner`), with a device buffer per I/O tensor.

    `activate` reads and verifies the plan file, deserializes it, checks its I/O against the part spec, creates the
    execution context, allocates one device buffer per tensor and sets every tensor address once. `bind` points a
    tensor at another buffer (another runner's output, a history row); `enqueue` runs on the stream without waiting.
    `infer(feed)` copies in, runs, waits and copies out, for tests and debugging. Without a stream it makes its own
    (and makes GPU 0's primary context current); the backend passes its one stream.
    """

    def __init__(self, path: Path, spec: PartSpec, stream: Any = None, sha256: str | None = None,
                 size_bytes: int | None = None, rebuild: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec
        self.sha256 = sha256
        self.size_bytes = size_bytes
        self.rebuild = rebuild or device_command(self.path.parent.parent, force=True)
        self.tensors: dict[str, EngineTensor] = {}
        self._stream = stream
        self._owns_stream = stream is None
        self._cuda_context = PrimaryContext()
        self._runtime: trt.Runtime | None = None
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._allocations: dict[str, Any] = {}
        self._addresses: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return self._context is not None

    def activate(self) -> None:
        if self.active:
            return
        cuda = import_pycuda()
        if import_tensorrt() is None or cuda is None:
            raise MobileVLAError(f"the TensorRT runner for {self.path} needs TensorRT and pycuda (see docs/jetson.md)")
        try:
            if self._owns_stream:
                self._cuda_context.push()
                self._stream = cuda_call("cuStreamCreate", cuda.Stream)
            self._load()
            for name, tensor in self.tensors.items():
                allocation = cuda_call(f"cuMemAlloc({self.spec.name}.{name}, {tensor.nbytes} B)", cuda.mem_alloc,
                                       max(tensor.nbytes, 1))
                self._allocations[name] = allocation
                self.bind(name, int(allocation))
        except BaseException:
            release_after_failure(self.deactivate)
            raise

    def _read_plan(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise MobileVLAError(f"cannot read engine {self.path} ({exc}); build it with `{self.rebuild}`") from exc
        if self.size_bytes is not None and len(data) != self.size_bytes:
            raise MobileVLAError(f"engine {self.path} has {len(data)} bytes, the manifest says {self.size_bytes}: "
                                 f"copy the bundle again or rebuild with `{self.rebuild}`")
        if self.sha256 is not None and hashlib.sha256(data).hexdigest() != self.sha256:
            raise MobileVLAError(f"engine {self.path} does not match its sha256 in the manifest (changed or damaged in "
                                 f"transfer): copy the bundle again or rebuild with `{self.rebuild}`")
        return data

    def _load(self) -> None:
        import tensorrt as trt

        runtime = trt.Runtime(runtime_logger())
        self._runtime = runtime
        engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(self._read_plan())
        if engine is None:
            raise MobileVLAError(
                f"TensorRT {trt.__version__} cannot deserialize {self.path} ({recent_tensorrt_errors()}): it was "
                f"built by another TensorRT version or for another GPU, or the file is damaged. Rebuild it on this "
                f"device: `{self.rebuild}`"
            )
        self._engine = engine
        self.tensors = read_engine_tensors(engine)
        check_engine_io(self.path, self.spec, self.tensors, self.rebuild)
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise MobileVLAError(
                f"TensorRT cannot create an execution context for {self.path} ({recent_tensorrt_errors()}): usually "
                f"too little GPU memory; on a Jetson GPU and CPU share RAM: stop other processes and retry"
            )
        self._context = context

    @property
    def context(self) -> trt.IExecutionContext:
        if self._context is None:
            raise RuntimeError(f"bug: runner for {self.spec.name} used before activate()")
        return self._context

    def address(self, name: str) -> int:
        """The device address tensor `name` is bound to now."""
        return self._addresses[name]

    def own_address(self, name: str) -> int:
        """The device buffer this runner allocated for `name` (still owned after `bind` points elsewhere)."""
        return int(self._allocations[name])

    def bind(self, name: str, address: int) -> None:
        """Point tensor `name` at `address` (TensorRT requires 256-byte alignment)."""
        if address % TENSOR_ALIGNMENT:
            raise RuntimeError(f"bug: {self.spec.name}.{name} bound to {address:#x}, not {TENSOR_ALIGNMENT}-aligned")
        check_status(f"{self.spec.name} set_tensor_address({name})", self.context.set_tensor_address(name, address))
        self._addresses[name] = address

    @property
    def stream(self) -> Any:
        return self._stream

    def enqueue(self) -> None:
        """Launch the engine on the stream (returns at once; while capturing, records into the graph)."""
        ok = self.context.execute_async_v3(self._stream.handle)
        if not ok:
            check_status(f"{self.spec.name} execute_async_v3", ok, hint=recent_tensorrt_errors())

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy `feed` in (converted to the engine's dtypes), run, wait, copy the outputs out (manifest dtypes)."""
        if not self.active:
            raise RuntimeError(f"bug: runner for {self.spec.name} used before activate()")
        cuda = import_pycuda()
        assert cuda is not None
        for spec in self.spec.inputs:
            host = np.ascontiguousarray(np.asarray(feed[spec.name]).reshape(spec.shape),
                                        dtype=self.tensors[spec.name].dtype)
            # Synchronous copies on the legacy default stream, which orders itself with our blocking stream.
            cuda_call(f"cuMemcpyHtoD({spec.name})", cuda.memcpy_htod, self._addresses[spec.name], host)
        self.enqueue()
        cuda_call("cuStreamSynchronize", self._stream.synchronize)
        outputs: dict[str, np.ndarray] = {}
        for spec in self.spec.outputs:
            host = np.empty(spec.shape, dtype=self.tensors[spec.name].dtype)
            cuda_call(f"cuMemcpyDtoH({spec.name})", cuda.memcpy_dtoh, host, self._addresses[spec.name])
            outputs[spec.name] = host.astype(spec.dtype, copy=False)
        return outputs

    def deactivate(self) -> None:
        """Free in reverse order: context, engine, runtime (TensorRT objects), then buffers, stream, CUDA context."""
        if self._context is not None and self._stream is not None:
            cuda_call("cuStreamSynchronize", self._stream.synchronize)
        self._context = None
        self._engine = None
        self._runtime = None
        for name, allocation in self._allocations.items():
            cuda_call(f"cuMemFree({self.spec.name}.{name})", allocation.free)
        self._allocations = {}
        self._addresses = {}
        if self._owns_stream:
            self._stream = None
            self._cuda_context.pop()



# --- the backend ---


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


class TensorRTBackend(Activated):
    """`runtime.backend.PolicyBackend` on TensorRT engines (see the module docstring for the per-frame plan).

    `frame` is a pinned host array once `activate()` has run (a plain array before): write each frame into
    `backend.frame` after activation. `graph` is `pending` (not yet captured), `captured`, or `off`
    (`graph_note` says why); `name` carries it into logs and benchmark reports.
    """

    def __init__(self, bundle: Bundle, precision: str, engines: dict[str, EngineChoice], tensorrt_version: str,
                 verify: bool = True, use_graph: bool = True) -> None:
        self.bundle = bundle
        self.precision = precision
        self.engines = engines
        self.tensorrt_version = tensorrt_version
        self.verify = verify
        parts = bundle.manifest.parts
        self.window = bundle.manifest.policy.window
        self.frame = np.zeros(parts["vision"].spec.inputs[0].shape, dtype=np.uint8)
        self.stage_ms = dict.fromkeys(MODEL_STAGES, 0.0)
        self.graph = "pending" if use_graph else "off"
        self.graph_note = "" if use_graph else "disabled by the caller"
        self.name = ""
        self._relabel()
        self.runners: dict[str, TensorRTRunner] = {}
        self._text: TextInputs | None = None
        self._count = 0  # frames in the window now (history_len on the device)
        self._warm = False  # a plain steady-state frame has run since the last reset: the next one may be captured
        self._cuda: Any = None
        self._driver: Any = None
        self._stream: Any = None
        self._cuda_context = PrimaryContext()
        self._events: list[int] = []
        self._exec = 0  # the instantiated CUDA graph, 0 when none
        self._scratch: Any = None
        self._host: dict[str, np.ndarray] = {}
        self._actions = np.zeros(0, np.float32)
        self._gripper: np.ndarray | None = None
        self._active = False

    def _relabel(self) -> None:
        kinds = {choice.precision for choice in self.engines.values()}  # e.g. int8 asked, some parts fell back to fp16
        parts = kinds.pop() if len(kinds) == 1 else ", ".join(
            f"{name} {choice.precision}" for name, choice in self.engines.items())
        self.name = f"tensorrt {self.tensorrt_version} ({parts}, cuda graph {self.graph})"

    # activation

    def activate(self) -> None:
        if self._active:
            return
        cuda = import_pycuda()
        if cuda is None:
            raise MobileVLAError("pycuda is not installed: `pip install pycuda` (see docs/jetson.md)")
        self._cuda = cuda
        self._cuda_context.push()
        try:
            self._stream = cuda_call("cuStreamCreate", cuda.Stream)
            self._driver = cuda_support.load_driver()
            if self.graph == "pending" and self._driver.graph_support:
                self._graph_off(self._driver.graph_support)
            manifest = self.bundle.manifest
            for name in MODEL_STAGES:
                choice = self.engines[name]
                self.runners[name] = TensorRTRunner(
                    choice.path, manifest.parts[name].spec, self._stream, choice.sha256 if self.verify else None,
                    choice.size_bytes, device_command(self.bundle.root, force=True))
                self.runners[name].activate()
            self._link()
            self._allocate_host()
            self._events = [self._driver.event_create() for _ in range(EVENTS)]
            self._active = True
            if self._text is not None:
                self._upload_text(self._text)
            self.reset()
        except BaseException:
            release_after_failure(self.deactivate)
            raise
        log.info("%s: engines %s", self.name,
                 ", ".join(f"{c.part}={c.path.name}" for c in self.engines.values()))

    def _link(self) -> None:
        """Vision's output feeds the trunk; the head's features buffer is the history the trunk writes into."""
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        trunk.bind("image_embeds", vision.address("image_embeds"))
        features = head.tensors["features"]
        self._row_bytes = features.nbytes // self.window
        self._direct = direct_history_writes(self._row_bytes)
        if not self._direct:
            log.info("history rows of %d bytes are not %d-byte aligned: the trunk writes its own buffer and a copy "
                     "moves it into the history", self._row_bytes, TENSOR_ALIGNMENT)
        if self.window > 1:
            size = (self.window - 1) * self._row_bytes
            self._scratch = cuda_call(f"cuMemAlloc(history scratch, {size} B)", self._cuda.mem_alloc, size)

    def _pinned(self, tensor: EngineTensor) -> np.ndarray:
        array: np.ndarray = cuda_call(f"cuMemHostAlloc({tensor.name})", self._cuda.pagelocked_zeros, tensor.shape,
                                      np.dtype(tensor.dtype))
        return array

    def _allocate_host(self) -> None:
        """Pinned host arrays: async copies need them, and a captured graph reads/writes them on every replay."""
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        self.frame = self._pinned(vision.tensors["frame"])
        self._host = {"history_len": self._pinned(head.tensors["history_len"])}
        for spec in trunk.spec.inputs:
            if spec.name != "image_embeds":
                self._host[spec.name] = self._pinned(trunk.tensors[spec.name])
        for spec in head.spec.outputs:
            self._host[spec.name] = self._pinned(head.tensors[spec.name])
        self._actions = self._host["actions"][0]
        self._gripper = self._host["gripper_logits"][0] if "gripper_logits" in self._host else None

    def deactivate(self) -> None:
        """Free everything; every step is attempted, the first CUDA error is raised at the end."""
        errors: list[CudaError] = []

        def attempt(action: Any, *args: Any) -> None:
            try:
                action(*args)
            except CudaError as exc:
                errors.append(exc)

        if self._stream is not None:
            attempt(cuda_call, "cuStreamSynchronize", self._stream.synchronize)
        if self._exec:
            attempt(self._driver.exec_destroy, self._exec)
            self._exec = 0
        for event in self._events:
            attempt(self._driver.event_destroy, event)
        self._events = []
        for runner in self.runners.values():
            attempt(runner.deactivate)
        self.runners = {}
        if self._scratch is not None:
            attempt(cuda_call, "cuMemFree(history scratch)", self._scratch.free)
            self._scratch = None
        # Ordinary copies: the pinned buffers must be freed while the context is current, so no view may outlive it.
        self.frame = np.array(self.frame)
        self._actions = np.array(self._actions)
        self._gripper = None if self._gripper is None else np.array(self._gripper)
        self._host = {}
        self._stream = None
        attempt(self._cuda_context.pop)
        self._active = False
        if errors:
            raise errors[0]

    # text and history

    def set_text(self, text: TextInputs) -> None:
        """Upload the trunk's text inputs into their device buffers (same addresses: a captured graph stays valid)."""
        self._text = text
        if self._active:
            self._upload_text(text)

    def _upload_text(self, text: TextInputs) -> None:
        trunk = self.runners["trunk"]
        for name, value in text.feed().items():
            host = self._host[name]
            if value.shape != host.shape:
                raise MobileVLAError(f"text input {name} has shape {value.shape}; the trunk engine takes {host.shape}. "
                                     f"The bundle's prompt settings and its engines disagree: rebuild the bundle")
            np.copyto(host, value, casting="unsafe")  # int64 -> int32 on TensorRT 8.x; token ids fit
            cuda_call(f"cuMemcpyHtoDAsync({name})", self._cuda.memcpy_htod_async, trunk.address(name), host,
                      self._stream)
        cuda_call("cuStreamSynchronize", self._stream.synchronize)

    def reset(self) -> None:
        """Zero the device history and history_len; the refill phase changes addresses, so the graph is dropped."""
        self._count = 0
        self._warm = False
        if not self._active:
            return
        head = self.runners["head"]
        for name in ("features", "history_len"):
            cuda_call(f"cuMemsetD8Async({name})", self._cuda.memset_d8_async, head.address(name), 0,
                      head.tensors[name].nbytes, self._stream)
        cuda_call("cuStreamSynchronize", self._stream.synchronize)
        self._drop_graph()

    def _drop_graph(self) -> None:
        if self._exec:
            executable, self._exec = self._exec, 0
            self._driver.exec_destroy(executable)
        if self.graph == "captured":
            self.graph = "pending"
            self._relabel()

    def _graph_off(self, why: str) -> None:
        self.graph, self.graph_note = "off", why
        self._relabel()
        log.warning("CUDA graph off, plain enqueues every frame: %s", why)

    # the frame

    def step(self) -> BackendOutputs:
        if not self._active:
            raise RuntimeError("bug: TensorRTBackend.step() before activate()")
        plan = history_plan(self._count, self.window)
        if plan.steady and self._exec:
            self._driver.launch(self._exec, self._stream.handle)
        elif plan.steady and self._warm and self.graph == "pending" and self._capture(plan):
            pass  # captured and launched
        else:
            self._enqueue(plan, capturing=False)
            self._warm = plan.steady
        cuda_call("cuStreamSynchronize", self._stream.synchronize)
        self._count = plan.new_len
        start, after_vision, after_trunk, end = self._events
        self.stage_ms["vision"] = self._driver.event_elapsed_ms(start, after_vision)
        self.stage_ms["trunk"] = self._driver.event_elapsed_ms(after_vision, after_trunk)
        self.stage_ms["head"] = self._driver.event_elapsed_ms(after_trunk, end)
        return BackendOutputs(self._actions, self._gripper, plan.new_len)

    def _enqueue(self, plan: HistoryPlan, capturing: bool) -> None:
        """One frame's work on the stream, in order; while capturing, the same calls become graph nodes."""
        cuda, stream, handle = self._cuda, self._stream, self._stream.handle
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        history = head.address("features")
        self._driver.event_record(self._events[0], handle, capturing)
        if plan.shift:
            self._shift_history(history)
        cuda_call("cuMemcpyHtoDAsync(frame)", cuda.memcpy_htod_async, vision.address("frame"), self.frame, stream)
        if not plan.shift:  # history_len changes only while the window fills
            self._host["history_len"][0] = plan.new_len
            cuda_call("cuMemcpyHtoDAsync(history_len)", cuda.memcpy_htod_async, head.address("history_len"),
                      self._host["history_len"], stream)
        vision.enqueue()
        self._driver.event_record(self._events[1], handle, capturing)
        slot = history + plan.write_slot * self._row_bytes
        if self._direct:
            if trunk.address("action_feature") != slot:
                trunk.bind("action_feature", slot)
            trunk.enqueue()
        else:
            trunk.enqueue()
            cuda_call("cuMemcpyDtoDAsync(feature -> history)", cuda.memcpy_dtod_async, slot,
                      trunk.own_address("action_feature"), self._row_bytes, stream)
        self._driver.event_record(self._events[2], handle, capturing)
        head.enqueue()
        for spec in head.spec.outputs:
            cuda_call(f"cuMemcpyDtoHAsync({spec.name})", cuda.memcpy_dtoh_async, self._host[spec.name],
                      head.address(spec.name), stream)
        self._driver.event_record(self._events[3], handle, capturing)

    def _shift_history(self, history: int) -> None:
        """Rows 1..W-1 -> 0..W-2 through the scratch buffer (cuMemcpy with overlapping ranges is undefined)."""
        if self._scratch is None:
            return  # window 1: the trunk overwrites the only row
        size = (self.window - 1) * self._row_bytes
        scratch = int(self._scratch)
        cuda_call("cuMemcpyDtoDAsync(history -> scratch)", self._cuda.memcpy_dtod_async, scratch,
                  history + self._row_bytes, size, self._stream)
        cuda_call("cuMemcpyDtoDAsync(scratch -> history)", self._cuda.memcpy_dtod_async, history, scratch, size,
                  self._stream)

    def _capture(self, plan: HistoryPlan) -> bool:
        """Capture this steady-state frame as one CUDA graph and launch it; False (graph off) if refused."""
        driver, handle = self._driver, self._stream.handle
        try:
            driver.begin_capture(handle)
        except CudaError as exc:
            self._graph_off(f"stream capture did not start: {exc}")
            return False
        refused: str | None = None
        try:
            self._enqueue(plan, capturing=True)
        except CudaError as exc:  # TensorRT returns False from execute_async_v3 for work it cannot capture
            refused = str(exc)
        finally:
            status, graph = driver.end_capture(handle)
        if refused is None and (status != CUDA_SUCCESS or not graph):
            refused = f"cuStreamEndCapture returned {driver.error_name(status)}"
        if refused is None:
            try:
                self._exec = driver.instantiate(graph)
            except CudaError as exc:
                refused = str(exc)
        if graph:
            driver.graph_destroy(graph)  # the executable graph keeps what it needs
        if refused is not None:
            self._graph_off(f"capture refused: {refused}")
            return False
        driver.launch(self._exec, handle)
        self.graph, self.graph_note = "captured", ""
        self._relabel()
        log.info("steady-state frame captured as one CUDA graph; replayed from now on")
        return True



def open_tensorrt_backend(bundle: Bundle, precision: str, verify: bool = True,
                          use_graph: bool = True) -> TensorRTBackend:
    """The TensorRT backend for `bundle` (not yet activated), or MobileVLAError saying why it cannot run here.

    Engine sizes are checked here; with `verify`, each engine's sha256 is checked when `activate()` reads it (the
    file is read once, for both).
    """
    reason = tensorrt_unavailable_reason(bundle, precision)
    if reason is not None:
        raise MobileVLAError(f"the TensorRT backend cannot run bundle {bundle.root}: {reason}")
    trt_module = import_tensorrt()
    assert trt_module is not None  # the reason above says so otherwise
    return TensorRTBackend(bundle, precision, engine_choices(bundle, precision), str(trt_module.__version__),
                           verify, use_graph)


if TYPE_CHECKING:  # mypy checks that both classes satisfy the protocols they implement

    def _implements(runner: TensorRTRunner, backend: TensorRTBackend) -> tuple[Runner, PolicyBackend]:
        return runner, backend
