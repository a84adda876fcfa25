"""One TensorRT engine as a `Runner` (docs/design.md §6): a device buffer per I/O tensor, the process's TensorRT
logger, and cleanup after a failed activation.

- Name-based I/O only (`num_io_tensors`, `get_tensor_name`, `set_tensor_address`, `execute_async_v3`): TensorRT
  >= 8.5, so the same code serves TensorRT 10.3 (JetPack 6.1/6.2) and 8.5/8.6 (see docs/jetson.md for JetPack 5's
  Python 3.8 bindings). TensorRT 8.x has no INT64 I/O (its ONNX parser makes int64 inputs int32); the runner accepts
  that and converts on upload.
- Every TensorRT status and CUDA call is checked (`check_status`, `cuda_call`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends.base import Activated
from runtime.backends.cuda import (
    CudaError,
    PrimaryContext,
    check_status,
    cuda_call,
    device_command,
    import_pycuda,
    import_tensorrt,
)
from runtime.backends.tensorrt.engines import EngineTensor, check_engine_io, read_engine_tensors
from runtime.errors import MobileVLAError
from runtime.specs import PartSpec

if TYPE_CHECKING:  # type-checked against tensorrt-stubs; imported lazily at run time
    import tensorrt as trt

log = logging.getLogger("runtime.tensorrt")
# NvInferRuntime.h, IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment."
TENSOR_ALIGNMENT = 256


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


class TensorRTRunner(Activated):
    """Runs one bundle part's engine (`runtime.backends.base.Runner`), with a device buffer per I/O tensor.

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
