"""The TensorRT backend: what runs here, and what runs only on a Jetson (or any CUDA machine with TensorRT).

Here (no TensorRT, pycuda or GPU):
- the no-TensorRT path: the reason names what is missing, open/choose refuse or fall back;
- engine compatibility as pure functions of manifest records, the engine I/O check, the history plan;
- the whole backend against a *simulated* GPU: fake `tensorrt`, `pycuda.driver` and CUDA driver modules whose
  "engines" run the bundle's ONNX graphs with ONNX Runtime on fake device memory, whose streams record into graphs
  while capturing and whose graphs replay what was recorded with the addresses of capture time. That exercises the
  real orchestration (buffer linking, the on-device history, the graph capture/replay/fallback, int32 I/O of
  TensorRT 8.x) and checks it frame by frame against the ONNX Runtime backend.
On the device (skipped here): parity of the real engines against ONNX Runtime, and the CUDA graph being captured.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime.cuda_support as cuda_support
from runtime.backend import PolicyBackend, onnx_backend
from runtime.bundle import Bundle, load_bundle, sha256_file
from runtime.bundle_write import write_manifest
from runtime.cuda_support import CudaDriver, CudaError, DeviceInfo, check_status, import_pycuda, import_tensorrt
from runtime.errors import MobileVLAError
from runtime.prompt import PromptEncoder
from runtime.sources import synthetic_frame
from runtime.specs import PartSpec, TensorSpec
from runtime.tensorrt_backend import (
    EngineTensor,
    TensorRTRunner,
    check_engine_io,
    choose_backend,
    engine_precision,
    engines_unavailable_reason,
    history_plan,
    open_tensorrt_backend,
    runtime_logger,
    tensorrt_unavailable_reason,
)

FAKE_VERSION = "10.3.0.30"
FAKE_DEVICE = DeviceInfo("Orin", "8.7", 16 << 30)

# --- a simulated GPU -------------------------------------------------------------------------------------------


class FakeMemory:
    """Device memory: blocks at 4 KiB-aligned fake addresses; any in-bounds address inside a block is valid."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = 0x100000

    def alloc(self, size: int) -> int:
        address = self._next
        self.blocks[address] = bytearray(size)
        self._next += (size // 4096 + 2) * 4096
        return address

    def view(self, address: int, size: int) -> memoryview:
        for base, block in self.blocks.items():
            if base <= address and address + size <= base + len(block):
                return memoryview(block)[address - base : address - base + size]
        raise AssertionError(f"device access {address:#x}+{size} is outside every allocation")


class FakeStream:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.handle = gpu.register_stream(self)
        self.capture: list[Callable[[], None]] | None = None
        self.invalidated = False

    def submit(self, op: Callable[[], None]) -> None:
        """Run now (the fake device is synchronous) or, while capturing, record for the graph."""
        if self.capture is not None:
            self.capture.append(op)
        else:
            op()

    def synchronize(self) -> None:
        assert self.capture is None, "cuStreamSynchronize on a capturing stream invalidates the capture"


class FakeGpu:
    """State shared by the fake modules; `refuse_capture` makes execute_async_v3 return False while capturing."""

    def __init__(self, int32_io: bool = False) -> None:
        self.memory = FakeMemory()
        self.streams: dict[int, FakeStream] = {}
        self.int32_io = int32_io
        self.refuse_capture = False
        self.launches = 0
        self.captures = 0
        self.pushed = 0

    def register_stream(self, stream: FakeStream) -> int:
        handle = 0x5000 + len(self.streams)
        self.streams[handle] = stream
        return handle


class FakeAllocation:
    def __init__(self, gpu: FakeGpu, size: int) -> None:
        self.gpu, self.address = gpu, gpu.memory.alloc(size)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        del self.gpu.memory.blocks[self.address]


def fake_pycuda(gpu: FakeGpu) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")
    memory = gpu.memory

    class Error(Exception):
        pass

    class Context:
        def push(self) -> None:
            gpu.pushed += 1

        @staticmethod
        def pop() -> None:
            gpu.pushed -= 1

    class Device:
        def __init__(self, number: int) -> None:
            assert number == 0

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return FAKE_DEVICE.name

        def compute_capability(self) -> tuple[int, int]:
            return 8, 7

        def total_memory(self) -> int:
            return FAKE_DEVICE.total_memory

        def retain_primary_context(self) -> Context:
            return Context()

    def htod(dest: Any, src: np.ndarray, stream: FakeStream) -> None:
        def op() -> None:  # reads the host array when it runs: a replayed graph sees the newest frame
            memory.view(int(dest), src.nbytes)[:] = src.tobytes()
        stream.submit(op)

    def dtoh(dest: np.ndarray, src: Any, stream: FakeStream) -> None:
        def op() -> None:
            dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(memory.view(int(src), dest.nbytes), np.uint8)
        stream.submit(op)

    def dtod(dest: Any, src: Any, size: int, stream: FakeStream) -> None:
        def op() -> None:
            memory.view(int(dest), size)[:] = bytes(memory.view(int(src), size))
        stream.submit(op)

    def memset_d8(dest: Any, value: int, count: int, stream: FakeStream) -> None:
        def op() -> None:
            memory.view(int(dest), count)[:] = bytes([value]) * count
        stream.submit(op)

    cuda.Error = Error  # type: ignore[attr-defined]
    cuda.Context = Context  # type: ignore[attr-defined]
    cuda.Device = Device  # type: ignore[attr-defined]
    cuda.init = lambda: None  # type: ignore[attr-defined]
    cuda.Stream = lambda: FakeStream(gpu)  # type: ignore[attr-defined]
    cuda.mem_alloc = lambda size: FakeAllocation(gpu, size)  # type: ignore[attr-defined]
    cuda.pagelocked_zeros = lambda shape, dtype: np.zeros(shape, dtype)  # type: ignore[attr-defined]
    cuda.memcpy_htod_async = htod  # type: ignore[attr-defined]
    cuda.memcpy_dtoh_async = dtoh  # type: ignore[attr-defined]
    cuda.memcpy_dtod_async = dtod  # type: ignore[attr-defined]
    cuda.memset_d8_async = memset_d8  # type: ignore[attr-defined]
    cuda.memcpy_htod = lambda dest, src: htod(dest, np.ascontiguousarray(src), FakeStream(gpu))  # type: ignore
    cuda.memcpy_dtoh = lambda dest, src: dtoh(dest, src, FakeStream(gpu))  # type: ignore[attr-defined]
    return cuda


ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(uint8)": "uint8"}


class FakeEngine:
    """An "engine" whose plan file names an ONNX graph; it runs that graph with ONNX Runtime."""

    def __init__(self, gpu: FakeGpu, onnx_path: str) -> None:
        import onnxruntime as ort

        self.gpu = gpu
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.io: dict[str, tuple[bool, str, tuple[int, ...]]] = {}
        for arg, is_input in [(a, True) for a in self.session.get_inputs()] + \
                             [(a, False) for a in self.session.get_outputs()]:
            dtype = ORT_DTYPES[arg.type]
            if dtype == "int64" and gpu.int32_io:  # TensorRT 8.x: int64 network inputs become int32
                dtype = "int32"
            self.io[arg.name] = (is_input, dtype, tuple(int(d) for d in arg.shape))
        self.names = list(self.io)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if self.io[name][0] else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.io[name][1])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.io[name][2]

    def get_tensor_location(self, name: str) -> str:
        return "DEVICE"

    def create_execution_context(self) -> FakeExecutionContext:
        return FakeExecutionContext(self)


class FakeExecutionContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.io:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine, gpu = self.engine, self.engine.gpu
        stream = gpu.streams[stream_handle]
        if stream.capture is not None and gpu.refuse_capture:
            stream.invalidated = True
            return False
        addresses = dict(self.addresses)  # a graph bakes the addresses of capture time into its kernels

        def op() -> None:
            feed = {}
            for name, (is_input, dtype, shape) in engine.io.items():
                if is_input:
                    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    value = np.frombuffer(gpu.memory.view(addresses[name], size), dtype).reshape(shape)
                    feed[name] = value.astype(np.int64) if dtype == "int32" else value.copy()
            outputs = engine.session.run(None, feed)
            for arg, value in zip(engine.session.get_outputs(), outputs, strict=True):
                data = np.ascontiguousarray(value, dtype=engine.io[arg.name][1]).tobytes()
                gpu.memory.view(addresses[arg.name], len(data))[:] = data

        stream.submit(op)
        return True


def fake_tensorrt(gpu: FakeGpu) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            try:
                plan = json.loads(data)
            except ValueError:
                self.logger.log(ILogger.Severity.ERROR, "not a plan file")  # type: ignore[attr-defined]
                return None
            return FakeEngine(gpu, plan["onnx"])

    trt.__version__ = FAKE_VERSION
    trt.Builder = object  # type: ignore[attr-defined]
    trt.ILogger = ILogger  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
    trt.TensorLocation = types.SimpleNamespace(DEVICE="DEVICE", HOST="HOST")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: dtype  # type: ignore[attr-defined]
    return trt


class FakeDriver:
    """`CudaDriver`'s interface: events and stream capture on the fake streams."""

    graph_support: str | None = None

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.times: dict[int, float] = {}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.live_events: set[int] = set()

    def event_create(self) -> int:
        event = 0x7000 + len(self.times) + len(self.live_events) * 100
        self.live_events.add(event)
        return event

    def event_destroy(self, event: int) -> None:
        self.live_events.remove(event)

    def event_record(self, event: int, stream: int, capturing: bool) -> None:
        target = self.gpu.streams[stream]
        assert capturing == (target.capture is not None), "external event records only inside a capture"
        target.submit(lambda: self.times.__setitem__(event, time.perf_counter()))

    def event_elapsed_ms(self, start: int, end: int) -> float:
        return (self.times[end] - self.times[start]) * 1e3

    def begin_capture(self, stream: int) -> None:
        self.gpu.streams[stream].capture = []

    def end_capture(self, stream: int) -> tuple[int, int]:
        target = self.gpu.streams[stream]
        ops, target.capture = target.capture, None
        if target.invalidated or ops is None:
            target.invalidated = False
            return cuda_support.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, 0
        graph = 0x9000 + len(self.graphs)
        self.graphs[graph] = ops
        self.gpu.captures += 1
        return 0, graph

    def error_name(self, code: int) -> str:
        return f"CUDA_ERROR_{code}"

    def instantiate(self, graph: int) -> int:
        executable = graph + 0x100
        self.graphs[executable] = list(self.graphs[graph])
        return executable

    def launch(self, executable: int, stream: int) -> None:
        self.gpu.launches += 1
        for op in self.graphs[executable]:
            self.gpu.streams[stream].submit(op)

    def graph_destroy(self, graph: int) -> None:
        del self.graphs[graph]

    def exec_destroy(self, executable: int) -> None:
        del self.graphs[executable]


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGpu]:
    gpu = FakeGpu()
    package = types.ModuleType("pycuda")
    driver = fake_pycuda(gpu)
    package.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(gpu))
    fake_driver = FakeDriver(gpu)
    monkeypatch.setattr(cuda_support, "load_driver", lambda: fake_driver)
    runtime_logger.cache_clear()
    yield gpu
    runtime_logger.cache_clear()


def with_fake_engines(source: Path, destination: Path, version: str = FAKE_VERSION,
                      device: DeviceInfo = FAKE_DEVICE) -> Path:
    """A copy of `source` whose manifest records engines (plan files naming the ONNX graph each engine runs)."""
    shutil.copytree(source, destination)
    bundle = load_bundle(destination, verify_hashes=False)
    (destination / "engines").mkdir(exist_ok=True)
    parts, files = dict(bundle.manifest.parts), dict(bundle.manifest.files)
    for name, entry in parts.items():
        engines = {}
        for precision in ("fp16", "int8") if entry.precision == "int8" and entry.int8_onnx else ("fp16",):
            relative = f"engines/{name}.{precision}.engine"
            onnx = entry.int8_onnx if precision == "int8" else entry.onnx
            assert onnx is not None
            (destination / relative).write_text(json.dumps({"onnx": str(destination / onnx)}))
            files[relative] = sha256_file(destination / relative)
            engines[precision] = {"file": relative, "precision": precision, "source": onnx, "tensorrt": version,
                                  "device": device.name, "compute_capability": device.compute_capability,
                                  "strongly_typed": precision == "int8",
                                  "size_bytes": (destination / relative).stat().st_size,
                                  "sha256": files[relative], "build_s": 0.1}
        parts[name] = replace(entry, engines=engines)
    write_manifest(destination, replace(bundle.manifest, parts=parts, files=files))
    return destination


@pytest.fixture
def engine_bundle(demo_bundle: Path, tmp_path: Path) -> Bundle:
    return load_bundle(with_fake_engines(demo_bundle, tmp_path / "bundle"))


def run_side_by_side(backends: list[PolicyBackend], bundle: Bundle, episodes: list[tuple[str, int]]) -> None:
    """Same frames and instructions through each backend; chunk and history_len equal frame by frame."""
    encoder = PromptEncoder(bundle.path(bundle.manifest.prompt.tokenizer_file), bundle.manifest.prompt)
    pre = bundle.manifest.preprocessing
    index = 0
    for instruction, frames in episodes:
        text = encoder.encode(instruction)
        for backend in backends:
            backend.reset()
            backend.set_text(text)
        for t in range(frames):
            frame = synthetic_frame(index, pre)
            index += 1
            outputs = []
            for backend in backends:
                np.copyto(backend.frame[0], frame)
                outputs.append(backend.step())
            reference = outputs[0]
            assert reference.history_len == min(t + 1, bundle.manifest.policy.window)
            for other in outputs[1:]:
                assert other.history_len == reference.history_len
                np.testing.assert_allclose(other.actions, reference.actions, atol=1e-5, err_msg=f"frame {t}")


# --- here: the no-TensorRT path ---------------------------------------------------------------------------------


needs_no_tensorrt = pytest.mark.skipif(import_tensorrt() is not None, reason="TensorRT is installed here")


@needs_no_tensorrt
def test_without_tensorrt_the_reason_says_so_and_open_refuses(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    reason = tensorrt_unavailable_reason(bundle, "int8")
    assert reason is not None and reason.startswith("TensorRT is not installed") and "docs/jetson.md" in reason
    with pytest.raises(MobileVLAError, match=f"cannot run bundle {bundle.root}: TensorRT is not installed"):
        open_tensorrt_backend(bundle, "int8")


@needs_no_tensorrt
def test_auto_falls_back_to_onnxruntime_and_tensorrt_refuses(demo_bundle: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(demo_bundle)
    with caplog.at_level(logging.INFO, logger="runtime.tensorrt"):
        choice = choose_backend("auto", bundle, "int8")
    assert choice.backend == "onnxruntime" and "TensorRT is not installed" in choice.reason
    assert "backend onnxruntime (auto: TensorRT unavailable: TensorRT is not installed" in caplog.text
    assert choose_backend("onnxruntime", bundle, "int8").backend == "onnxruntime"
    with pytest.raises(MobileVLAError, match=r"--backend tensorrt cannot run bundle .*TensorRT is not installed"):
        choose_backend("tensorrt", bundle, "int8")
    with pytest.raises(MobileVLAError, match="--backend 'cuda' is not one of"):
        choose_backend("cuda", bundle, "int8")


def test_tensorrt_precisions_only(demo_bundle: Path) -> None:
    reason = tensorrt_unavailable_reason(load_bundle(demo_bundle), "fp32")
    assert reason == "TensorRT runs fp16 or int8 engines, not fp32"


def test_status_checks_name_the_call() -> None:
    check_status("ok", True)
    check_status("ok", 0)
    check_status("created", object())
    with pytest.raises(CudaError, match=r"^vision execute_async_v3 failed: returned False \(out of memory\)$"):
        check_status("vision execute_async_v3", False, hint="out of memory")
    with pytest.raises(CudaError, match="deserialize_cuda_engine failed: returned None"):
        check_status("deserialize_cuda_engine", None)
    with pytest.raises(CudaError, match="cuGraphLaunch failed: returned CUDA_ERROR_INVALID_VALUE"):
        check_status("cuGraphLaunch", 1, lambda code: "CUDA_ERROR_INVALID_VALUE")


def test_cuda_driver_binds_capture_calls_and_reports_errors_by_name() -> None:
    """`CudaDriver` over a fake libcuda: ctypes out-parameters, the error names, a driver without graph calls."""
    calls: list[str] = []

    def out(pointer: Any, value: Any) -> None:
        pointer._obj.value = value  # ctypes.byref(...) passes a CArgObject holding the ctypes object

    def fn(name: str, result: int = 0, write: Any = None) -> Callable[..., int]:
        def call(*args: Any) -> int:
            calls.append(name)
            if write is not None:
                out(args[write[0]], write[1])
            return result
        return call

    lib = types.SimpleNamespace(
        cuGetErrorName=fn("cuGetErrorName", write=(1, b"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED")),
        cuEventCreate=fn("cuEventCreate", write=(0, 0x77)),
        cuEventDestroy_v2=fn("cuEventDestroy_v2"),
        cuEventRecord=fn("cuEventRecord"),
        cuEventElapsedTime=fn("cuEventElapsedTime", write=(0, 1.5)),
        cuStreamBeginCapture_v2=fn("cuStreamBeginCapture_v2"),
        cuStreamEndCapture=fn("cuStreamEndCapture", result=901),
        cuGraphInstantiateWithFlags=fn("cuGraphInstantiateWithFlags", write=(0, 0x99)),
        cuGraphLaunch=fn("cuGraphLaunch", result=1),
        cuGraphExecDestroy=fn("cuGraphExecDestroy"),
        cuGraphDestroy=fn("cuGraphDestroy"),
        cuEventRecordWithFlags=fn("cuEventRecordWithFlags"),
    )
    driver = CudaDriver(lib)
    assert driver.graph_support is None
    assert lib.cuStreamBeginCapture_v2.argtypes == [ctypes.c_void_p, ctypes.c_int]
    assert driver.event_create() == 0x77
    assert driver.event_elapsed_ms(1, 2) == 1.5
    driver.event_record(0x77, 0x5, capturing=True)
    driver.event_record(0x77, 0x5, capturing=False)
    assert calls[-2:] == ["cuEventRecordWithFlags", "cuEventRecord"]
    assert driver.end_capture(0x5) == (901, 0)  # not raised: the caller turns the graph off
    assert driver.instantiate(0x42) == 0x99
    with pytest.raises(CudaError, match=r"cuGraphLaunch failed: returned CUDA_ERROR_STREAM_CAPTURE_INVALIDATED \(1\)"):
        driver.launch(0x99, 0x5)
    del lib.cuGraphInstantiateWithFlags
    old = CudaDriver(lib)
    assert old.graph_support == "this CUDA driver lacks cuGraphInstantiateWithFlags"
    with pytest.raises(CudaError, match="cuGraphInstantiateWithFlags is not in this CUDA driver"):
        old.instantiate(0x42)


# --- here: engine compatibility and I/O, as pure functions -----------------------------------------------------


def test_engine_precision_follows_the_int8_gate(demo_bundle: Path) -> None:
    entry = load_bundle(demo_bundle).manifest.parts["trunk"]
    assert entry.precision == "int8"
    assert engine_precision(entry, "int8") == "int8"
    assert engine_precision(entry, "fp16") == "fp16"
    assert engine_precision(replace(entry, precision="fp16"), "int8") == "fp16"  # failed the gate: FP16 engine


def test_current_engines_are_runnable(engine_bundle: Bundle) -> None:
    assert engines_unavailable_reason(engine_bundle, "int8", FAKE_VERSION, FAKE_DEVICE) is None
    assert engines_unavailable_reason(engine_bundle, "fp16", FAKE_VERSION, FAKE_DEVICE) is None


def test_engines_not_built(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    reason = engines_unavailable_reason(bundle, "int8", FAKE_VERSION, FAKE_DEVICE)
    assert reason == (f"engines not built: the vision part has no int8 TensorRT engine; build them on this device: "
                      f"`build_engines --engines-only --bundle {bundle.root}`")


@pytest.mark.parametrize(("version", "device", "built"), [
    ("8.6.2.3", FAKE_DEVICE, "TensorRT 10.3.0.30 on Orin (sm 8.7)"),
    (FAKE_VERSION, DeviceInfo("NVIDIA GeForce RTX 3060", "8.6", 12 << 30), "TensorRT 10.3.0.30 on Orin (sm 8.7)"),
])
def test_engines_for_another_tensorrt_or_gpu_are_refused_with_the_rebuild_command(
        engine_bundle: Bundle, version: str, device: DeviceInfo, built: str) -> None:
    reason = engines_unavailable_reason(engine_bundle, "int8", version, device)
    assert reason == (f"the vision int8 engine was built for {built} but this machine has TensorRT {version} on "
                      f"{device.name} (sm {device.compute_capability}): rebuild on this device with "
                      f"`build_engines --engines-only --bundle {engine_bundle.root}`")


def test_missing_or_truncated_engine_file(engine_bundle: Bundle) -> None:
    trunk = engine_bundle.root / "engines" / "trunk.int8.engine"
    trunk.write_bytes(trunk.read_bytes()[:-1])
    reason = engines_unavailable_reason(engine_bundle, "int8", FAKE_VERSION, FAKE_DEVICE)
    assert reason is not None and "engines/trunk.int8.engine has" in reason
    assert f"build_engines --engines-only --force-engines --bundle {engine_bundle.root}" in reason
    trunk.unlink()
    reason = engines_unavailable_reason(engine_bundle, "int8", FAKE_VERSION, FAKE_DEVICE)
    assert reason is not None and reason.startswith("engine file engines/trunk.int8.engine is missing")


def test_engine_io_must_match_the_part_spec() -> None:
    spec = PartSpec("head", inputs=(TensorSpec("features", "float32", (1, 8, 64)),
                                    TensorSpec("history_len", "int64", (1,))),
                    outputs=(TensorSpec("actions", "float32", (1, 10, 2)),), opset=17, tolerance=1e-4)
    good = {"features": EngineTensor("features", True, "float32", (1, 8, 64)),
            "history_len": EngineTensor("history_len", True, "int32", (1,)),  # TensorRT 8.x: int64 inputs -> int32
            "actions": EngineTensor("actions", False, "float32", (1, 10, 2))}
    check_engine_io(Path("head.engine"), spec, good, "REBUILD")
    half = {**good, "actions": EngineTensor("actions", False, "float16", (1, 10, 2))}
    with pytest.raises(MobileVLAError, match=r"head.engine: tensor actions is output float16\[1, 10, 2\]; the "
                                             r"manifest's head part expects output float32\[1, 10, 2\] .*`REBUILD`"):
        check_engine_io(Path("head.engine"), spec, half, "REBUILD")
    dynamic = {**good, "features": EngineTensor("features", True, "float32", (1, -1, 64))}
    with pytest.raises(MobileVLAError, match=r"features is input float32\[1, -1, 64\]"):
        check_engine_io(Path("head.engine"), spec, dynamic, "REBUILD")
    renamed = {**good, "chunk": good["actions"]}
    del renamed["actions"]
    with pytest.raises(MobileVLAError, match=r"has I/O tensors .*'chunk'.* another bundle: rebuild it with `REBUILD`"):
        check_engine_io(Path("head.engine"), spec, renamed, "REBUILD")


# --- here: the history rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 3, 8])
def test_history_plan_keeps_the_last_frames_left_aligned_with_zero_rows_after(window: int) -> None:
    """Applying the plan (shift via a scratch copy, write one row) gives the ONNX head's expected window."""
    history = np.zeros((window, 2), np.float32)
    count = 0
    features = []
    for t in range(3 * window + 2):
        if t == 2 * window:  # reset mid-episode
            history[...] = 0
            count = 0
            features = []
        feature = np.full(2, t + 1, np.float32)
        features.append(feature)
        plan = history_plan(count, window)
        if plan.shift:
            scratch = history[1:].copy()
            history[:-1] = scratch
        history[plan.write_slot] = feature
        count = plan.new_len
        k = min(len(features), window)
        assert count == k and plan.steady == (len(features) > window)
        np.testing.assert_array_equal(history[:k], np.stack(features[-k:]))
        assert not history[k:].any()
    with pytest.raises(ValueError):
        history_plan(window + 1, window)


# --- here: the whole backend on a simulated GPU ----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize("int32_io", [False, True], ids=["tensorrt10", "tensorrt8-int32-io"])
def test_backend_matches_onnxruntime_and_replays_a_cuda_graph(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                              precision: str, int32_io: bool) -> None:
    fake_gpu.int32_io = int32_io
    backend = open_tensorrt_backend(engine_bundle, precision)
    reference = onnx_backend(engine_bundle, "int8" if precision == "int8" else "fp32")
    assert backend.name == f"tensorrt {FAKE_VERSION} ({precision}, cuda graph pending)"
    with reference, backend:
        # window 8: 8 fill-up frames, 1 plain warm-up, 1 captured, the rest replayed; then again after a reset
        run_side_by_side([reference, backend], engine_bundle, [("go to the box", 12), ("turn left", 11)])
        assert backend.graph == "captured" and backend.name.endswith("cuda graph captured)")
        assert fake_gpu.captures == 2 and fake_gpu.launches == 3 + 2
        assert set(backend.stage_ms) == {"vision", "trunk", "head"}
        assert all(ms >= 0 for ms in backend.stage_ms.values())
    assert fake_gpu.pushed == 0  # the primary context was popped
    assert fake_gpu.memory.blocks == {}  # every device buffer freed


def test_refused_capture_falls_back_to_plain_enqueues(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    fake_gpu.refuse_capture = True
    with onnx_backend(engine_bundle, "int8") as reference, open_tensorrt_backend(engine_bundle, "int8") as backend:
        with caplog.at_level(logging.WARNING, logger="runtime.tensorrt"):
            run_side_by_side([reference, backend], engine_bundle, [("go to the box", 12), ("go", 10)])
        assert backend.graph == "off" and "vision execute_async_v3 failed" in backend.graph_note
        assert backend.name.endswith("cuda graph off)")
        assert caplog.text.count("CUDA graph off") == 1  # logged once, not per frame or per episode
        assert fake_gpu.launches == 0


def test_unaligned_history_rows_go_through_a_copy(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of 256 bytes against a 512-byte alignment: the trunk writes its own buffer, a copy fills the row."""
    import runtime.tensorrt_backend as module

    monkeypatch.setattr(module, "TENSOR_ALIGNMENT", 512)
    with onnx_backend(engine_bundle, "fp32") as reference, open_tensorrt_backend(engine_bundle, "fp16") as backend:
        assert not backend._direct
        run_side_by_side([reference, backend], engine_bundle, [("go to the box", 11)])
        assert backend.graph == "captured"


def test_text_set_before_activation_is_uploaded_on_activate(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    encoder = PromptEncoder(engine_bundle.path(engine_bundle.manifest.prompt.tokenizer_file),
                            engine_bundle.manifest.prompt)
    text = encoder.encode("turn right")
    backend = open_tensorrt_backend(engine_bundle, "fp16")
    backend.set_text(text)
    frame = synthetic_frame(3, engine_bundle.manifest.preprocessing)
    with backend, onnx_backend(engine_bundle, "fp32") as reference:
        reference.set_text(text)
        for side in (backend, reference):
            np.copyto(side.frame[0], frame)
        np.testing.assert_allclose(backend.step().actions, reference.step().actions, atol=1e-5)


def test_runner_infer_and_engine_checks(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    entry = engine_bundle.manifest.parts["head"]
    record = entry.engines["fp16"]
    features = np.random.default_rng(0).standard_normal((1, 8, 64)).astype(np.float32)
    feed = {"features": features, "history_len": np.array([5], np.int64)}
    with TensorRTRunner(engine_bundle.path(record["file"]), entry.spec, sha256=record["sha256"]) as runner:
        got = runner.infer(feed)
    with onnx_backend(engine_bundle, "fp32") as reference:
        expected = reference.runners["head"].infer(feed)
    np.testing.assert_allclose(got["actions"], expected["actions"], atol=1e-6)
    assert fake_gpu.pushed == 0
    with pytest.raises(MobileVLAError, match=r"does not match its sha256 in the manifest .*--force-engines"):
        TensorRTRunner(engine_bundle.path(record["file"]), entry.spec, sha256="0" * 64).activate()
    other = engine_bundle.manifest.parts["trunk"].engines["fp16"]  # the trunk's engine for the head's spec
    with pytest.raises(MobileVLAError, match=r"has I/O tensors .* the manifest's head part has"):
        TensorRTRunner(engine_bundle.path(other["file"]), entry.spec).activate()
    garbage = engine_bundle.root / "engines" / "garbage.engine"
    garbage.write_bytes(b"\x00plan")
    with pytest.raises(MobileVLAError, match=f"cannot deserialize {garbage} \\(not a plan file\\)"):
        TensorRTRunner(garbage, entry.spec).activate()
    assert fake_gpu.pushed == 0 and fake_gpu.memory.blocks == {}  # failed activations clean up


def test_auto_chooses_tensorrt_where_it_can_run(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    choice = choose_backend("auto", engine_bundle, "int8")
    assert choice == type(choice)("tensorrt", "auto: the bundle's int8 engines match this TensorRT and GPU")
    assert choose_backend("tensorrt", engine_bundle, "fp16").reason.startswith("--backend tensorrt: the bundle's fp16")
    stale = load_bundle(with_fake_engines(engine_bundle.root, engine_bundle.root.parent / "stale", version="10.0.1.6"))
    choice = choose_backend("auto", stale, "int8")
    assert choice.backend == "onnxruntime" and "built for TensorRT 10.0.1.6" in choice.reason


def test_name_lists_each_part_when_int8_fell_back_to_fp16_somewhere(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    manifest = engine_bundle.manifest
    parts = {**manifest.parts, "head": replace(manifest.parts["head"], precision="fp16")}  # head failed the gate
    mixed = Bundle(engine_bundle.root, replace(manifest, parts=parts))
    backend = open_tensorrt_backend(mixed, "int8")
    assert backend.name == f"tensorrt {FAKE_VERSION} (vision int8, trunk int8, head fp16, cuda graph pending)"
    assert open_tensorrt_backend(mixed, "fp16").name == f"tensorrt {FAKE_VERSION} (fp16, cuda graph pending)"


# --- on the device: real TensorRT and pycuda ---------------------------------------------------------------------


needs_tensorrt = pytest.mark.skipif(
    import_tensorrt() is None or import_pycuda() is None,
    reason="needs TensorRT and pycuda on a CUDA machine (a Jetson: see docs/jetson.md)",
)


def device_bundle(demo_bundle: Path, precision: str) -> Bundle:
    """$MOBILE_VLA_TRT_BUNDLE or the demo bundle, with engines built on this device (else skipped, saying how)."""
    bundle = load_bundle(Path(os.environ.get("MOBILE_VLA_TRT_BUNDLE", demo_bundle)))
    reason = tensorrt_unavailable_reason(bundle, precision)
    if reason is not None:
        pytest.skip(reason)
    return bundle


@needs_tensorrt
@pytest.mark.parametrize(("precision", "atol"), [("fp16", 0.02), ("int8", 0.05)])
def test_device_tensorrt_matches_onnxruntime(demo_bundle: Path, precision: str, atol: float) -> None:
    """Real engines against ONNX Runtime on the same frames, across the window roll-over and a reset.

    fp16 engines against the FP32 graphs; int8 engines against the same Q/DQ graphs run by ONNX Runtime. The chunk
    is the head's tanh output in [-1, 1]; `atol` bounds FP16/INT8 kernel differences, not model error.
    """
    bundle = device_bundle(demo_bundle, precision)
    encoder = PromptEncoder(bundle.path(bundle.manifest.prompt.tokenizer_file), bundle.manifest.prompt)
    pre = bundle.manifest.preprocessing
    with onnx_backend(bundle, "int8" if precision == "int8" else "fp32") as reference, \
            open_tensorrt_backend(bundle, precision) as backend:
        worst = 0.0
        for episode, frames in enumerate((12, 10)):
            text = encoder.encode(bundle.manifest.prompt.default_instruction)
            for side in (reference, backend):
                side.reset()
                side.set_text(text)
            for t in range(frames):
                frame = synthetic_frame(100 * episode + t, pre)
                for side in (reference, backend):
                    np.copyto(side.frame[0], frame)
                expected, got = reference.step(), backend.step()
                assert got.history_len == expected.history_len
                worst = max(worst, float(np.abs(got.actions - expected.actions).max()))
        assert worst <= atol, f"{backend.name}: max abs error {worst:.4f} against ONNX Runtime"


@needs_tensorrt
def test_device_steady_state_runs_as_a_cuda_graph(demo_bundle: Path) -> None:
    bundle = device_bundle(demo_bundle, "fp16")
    with open_tensorrt_backend(bundle, "fp16") as backend:
        for t in range(bundle.manifest.policy.window + 3):
            np.copyto(backend.frame[0], synthetic_frame(t, bundle.manifest.preprocessing))
            backend.step()
        assert backend.graph == "captured", f"CUDA graph {backend.graph}: {backend.graph_note}"
        assert all(ms > 0 for ms in backend.stage_ms.values()), backend.stage_ms

