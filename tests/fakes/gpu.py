"""A simulated GPU for the TensorRT backend's tests (tests/runtime/backends/): fake `tensorrt`, `pycuda.driver`
and CUDA driver modules whose "engines" run the bundle's ONNX graphs with ONNX Runtime on fake device memory,
whose streams record into graphs while capturing and whose graphs replay what was recorded with the addresses of
capture time (`fake_gpu` in tests/runtime/backends/conftest.py puts them in place)."""

from __future__ import annotations

import json
import shutil
import time
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import runtime.backends.cuda as cuda_support
from runtime.backends.cuda import DeviceInfo
from runtime.bundle import load_bundle, sha256_file
from runtime.bundle_write import write_manifest

FAKE_VERSION = "10.3.0.30"


FAKE_DEVICE = DeviceInfo("Orin", "8.7", 16 << 30)


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
