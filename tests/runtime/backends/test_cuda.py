"""`runtime/backends/cuda.py`: CUDA statuses named by call, the driver's capture calls bound and their errors named."""

from __future__ import annotations

import ctypes
import types
from collections.abc import Callable
from typing import Any

import pytest

from runtime.backends.cuda import CudaDriver, CudaError, check_status


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
