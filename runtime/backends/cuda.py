"""CUDA plumbing shared by the TensorRT backend and the engine builder (docs/design.md §4, §6).

Nothing here imports TensorRT or pycuda at module level: `runtime` imports on machines without them.

- `import_tensorrt`, `import_pycuda`, `cuda_device`: what this machine has, for backend choice and engine records.
- `check_status` / `cuda_call`: the one place CUDA and TensorRT statuses are checked. TensorRT calls that return a
  bool (or None for a failed object), and CUDA driver result codes, go through `check_status`; pycuda raises its own
  exceptions, which `cuda_call` turns into `CudaError` naming the call.
- `CudaDriver`: the few CUDA driver calls pycuda lacks, through ctypes on `libcuda.so.1` (the library pycuda itself
  links, so no extra package): stream capture into a CUDA graph, graph launch, and events that can be recorded as
  nodes inside a captured graph. Released pycuda (2025.x) has no graph API: its CUDA-graph pull request (#343) was
  never merged, and its `Event` exposes no handle.
- `PrimaryContext`: GPU 0's primary context, the one the CUDA runtime (and so TensorRT) uses, made current.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import MobileVLAError

log = logging.getLogger("runtime.cuda")

T = TypeVar("T")

# cuda.h values (CUDA 11.4+ drivers: JetPack 5.1 and 6 both have them).
CUDA_SUCCESS = 0
CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1  # what trtexec captures with: other threads' CUDA calls stay legal
CU_EVENT_DEFAULT = 0  # timing enabled (CU_EVENT_DISABLE_TIMING would make cuEventElapsedTime fail)
CU_EVENT_RECORD_DEFAULT = 0
CU_EVENT_RECORD_EXTERNAL = 1  # inside a capture: an event-record node the graph replays (invalid outside capture)


class CudaError(RuntimeError):
    """A CUDA or TensorRT call failed while running: a device or driver fault, not a user error and not a bug."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # e.g. "8.7" (Orin)
    total_memory: int


def import_tensorrt() -> Any | None:
    """The `tensorrt` module, or None where it is not installed (a stub-only namespace package counts as missing)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt if hasattr(trt, "Builder") else None


def import_pycuda() -> Any | None:
    """`pycuda.driver`, or None where pycuda is not installed (or was built without a usable CUDA)."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    return cuda


def device_command(bundle: Path, force: bool = False) -> str:
    """What to run on the device to build (or, with `force`, rebuild) the bundle's engines."""
    return f"build_engines --engines-only {'--force-engines ' if force else ''}--bundle {bundle}"


def cuda_device() -> DeviceInfo:
    """Name and compute capability of GPU 0, through pycuda (the runtime's CUDA binding)."""
    cuda = import_pycuda()
    if cuda is None:
        raise MobileVLAError(
            "pycuda is not installed: `pip install pycuda` (on a Jetson, with CUDA's nvcc on PATH: "
            "export PATH=/usr/local/cuda/bin:$PATH)"
        )
    try:
        cuda.init()
        count = int(cuda.Device.count())
        if count == 0:
            raise MobileVLAError("no CUDA device is visible (cuDeviceGetCount is 0); on a Jetson, check the container "
                                 "runs with --runtime nvidia")
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return DeviceInfo(str(device.name()), f"{major}.{minor}", int(device.total_memory()))
    except cuda.Error as exc:
        raise MobileVLAError(
            f"no usable CUDA device ({type(exc).__name__}: {exc}); check the NVIDIA driver (on a Jetson: JetPack is "
            f"installed and this user is in the `video` group; in a container: --runtime nvidia)"
        ) from exc


def check_status(call: str, status: object, describe: Callable[[int], str] | None = None, hint: str = "") -> None:
    """The one status check: raise `CudaError` naming `call` unless `status` means success.

    TensorRT returns a bool from calls like `set_tensor_address`/`execute_async_v3` and None for an object it could
    not create; the CUDA driver returns a result code (0 = CUDA_SUCCESS). Any other object is a created object.
    """
    if isinstance(status, bool):  # before int: bool is an int subclass and False == 0 == CUDA_SUCCESS
        if status:
            return
        detail = "returned False"
    elif status is None:
        detail = "returned None"
    elif isinstance(status, int):
        if status == CUDA_SUCCESS:
            return
        detail = f"returned {describe(status) if describe else status}"
    else:
        return
    raise CudaError(f"{call} failed: {detail}{f' ({hint})' if hint else ''}")


def cuda_call(call: str, fn: Callable[..., T], *args: Any) -> T:
    """Run a pycuda call; its exceptions become `CudaError` naming the call (pycuda checks every CUresult itself)."""
    cuda = import_pycuda()
    error: type[BaseException] = cuda.Error if cuda is not None else RuntimeError
    try:
        return fn(*args)
    except error as exc:
        raise CudaError(f"{call} failed: {type(exc).__name__}: {exc}") from exc


class CudaDriver:
    """Driver API calls through ctypes: CUDA graphs from stream capture, and events (see the module docstring).

    Handles (streams, events, graphs) are plain ints. Every call's CUresult goes through `check_status`, except
    `end_capture`, whose failure is an expected outcome (TensorRT refused the capture) that the caller handles.
    """

    GRAPH_CALLS = ("cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphInstantiateWithFlags", "cuGraphLaunch",
                   "cuGraphExecDestroy", "cuGraphDestroy", "cuEventRecordWithFlags")

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        p, u, i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        signatures: dict[str, list[Any]] = {
            "cuGetErrorName": [i, ctypes.POINTER(ctypes.c_char_p)],
            "cuEventCreate": [ctypes.POINTER(p), u],
            "cuEventDestroy_v2": [p],
            "cuEventRecord": [p, p],
            "cuEventElapsedTime": [ctypes.POINTER(ctypes.c_float), p, p],
            # cuda.h maps cuStreamBeginCapture to the _v2 symbol (the one with a capture mode).
            "cuStreamBeginCapture_v2": [p, i],
            "cuStreamEndCapture": [p, ctypes.POINTER(p)],
            # CUDA 11.4+; CUDA 12's cuGraphInstantiate macro maps to it, CUDA 11's to a 5-argument _v2.
            "cuGraphInstantiateWithFlags": [ctypes.POINTER(p), p, ctypes.c_ulonglong],
            "cuGraphLaunch": [p, p],
            "cuGraphExecDestroy": [p],
            "cuGraphDestroy": [p],
            "cuEventRecordWithFlags": [p, p, u],  # CUDA 11.1+
        }
        self.missing: list[str] = []
        for name, argtypes in signatures.items():
            function = getattr(lib, name, None)
            if function is None:
                self.missing.append(name)
                continue
            function.argtypes = argtypes
            function.restype = ctypes.c_int

    @property
    def graph_support(self) -> str | None:
        """None when CUDA graphs can be captured here, else why not."""
        absent = [name for name in self.GRAPH_CALLS if name in self.missing]
        return f"this CUDA driver lacks {', '.join(absent)}" if absent else None

    def _call(self, name: str, *args: Any) -> None:
        if name in self.missing:
            raise CudaError(f"{name} is not in this CUDA driver (libcuda.so.1 is older than the runtime needs)")
        check_status(name, getattr(self._lib, name)(*args), self.error_name)

    def error_name(self, code: int) -> str:
        text = ctypes.c_char_p()
        if "cuGetErrorName" in self.missing or self._lib.cuGetErrorName(code, ctypes.byref(text)) != CUDA_SUCCESS:
            return f"CUresult {code}"
        return f"{(text.value or b'').decode()} ({code})"

    def event_create(self) -> int:
        event = ctypes.c_void_p()
        self._call("cuEventCreate", ctypes.byref(event), CU_EVENT_DEFAULT)
        return int(event.value or 0)

    def event_destroy(self, event: int) -> None:
        self._call("cuEventDestroy_v2", ctypes.c_void_p(event))

    def event_record(self, event: int, stream: int, capturing: bool) -> None:
        """Record on `stream`; while capturing, as an external event node so the graph replays it every launch."""
        if capturing:
            self._call("cuEventRecordWithFlags", ctypes.c_void_p(event), ctypes.c_void_p(stream),
                       CU_EVENT_RECORD_EXTERNAL)
        else:
            self._call("cuEventRecord", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def event_elapsed_ms(self, start: int, end: int) -> float:
        milliseconds = ctypes.c_float()
        self._call("cuEventElapsedTime", ctypes.byref(milliseconds), ctypes.c_void_p(start), ctypes.c_void_p(end))
        return float(milliseconds.value)

    def begin_capture(self, stream: int) -> None:
        self._call("cuStreamBeginCapture_v2", ctypes.c_void_p(stream), CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)

    def end_capture(self, stream: int) -> tuple[int, int]:
        """(CUresult, graph handle); the graph is 0 when the capture was invalidated. Not raised: see the class."""
        graph = ctypes.c_void_p()
        status = int(self._lib.cuStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)))
        return status, int(graph.value or 0)

    def instantiate(self, graph: int) -> int:
        executable = ctypes.c_void_p()
        self._call("cuGraphInstantiateWithFlags", ctypes.byref(executable), ctypes.c_void_p(graph), 0)
        return int(executable.value or 0)

    def launch(self, executable: int, stream: int) -> None:
        self._call("cuGraphLaunch", ctypes.c_void_p(executable), ctypes.c_void_p(stream))

    def graph_destroy(self, graph: int) -> None:
        self._call("cuGraphDestroy", ctypes.c_void_p(graph))

    def exec_destroy(self, executable: int) -> None:
        self._call("cuGraphExecDestroy", ctypes.c_void_p(executable))


def load_driver() -> CudaDriver:
    """The CUDA driver library pycuda already loaded (same handle: dlopen of a loaded library returns it)."""
    try:
        return CudaDriver(ctypes.CDLL("libcuda.so.1"))
    except OSError as exc:
        raise MobileVLAError(f"cannot load the CUDA driver library libcuda.so.1 ({exc}); on a Jetson it comes with "
                             f"JetPack (/usr/lib/aarch64-linux-gnu/tegra)") from exc


class PrimaryContext:
    """GPU 0's primary context, current on the calling thread between `push()` and `pop()`.

    The primary context is the one the CUDA runtime API uses, so TensorRT (runtime API) and pycuda (driver API) work
    on the same context, as `pycuda.autoprimaryctx` arranges. CUDA contexts are current per thread: activate, step
    and deactivate a backend from one thread.
    """

    def __init__(self) -> None:
        self._context: Any = None

    def push(self) -> None:
        cuda = import_pycuda()
        if cuda is None:
            raise MobileVLAError("pycuda is not installed: `pip install pycuda` (see docs/jetson.md)")
        cuda_call("cuInit", cuda.init)
        device = cuda_call("cuDeviceGet(0)", cuda.Device, 0)
        self._context = cuda_call("cuDevicePrimaryCtxRetain", device.retain_primary_context)
        cuda_call("cuCtxPushCurrent", self._context.push)

    def pop(self) -> None:
        if self._context is None:
            return
        cuda = import_pycuda()
        assert cuda is not None  # push() succeeded, so pycuda imported
        cuda_call("cuCtxPopCurrent", cuda.Context.pop)
        self._context = None  # pycuda releases the retained primary context when the object goes
