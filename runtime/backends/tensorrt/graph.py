"""One frame's work captured as a CUDA graph (docs/design.md §4), through the CUDA driver layer
(runtime/backends/cuda.py): released pycuda has no graph API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.backends.cuda import CUDA_SUCCESS, CudaError


def capture_graph(driver: Any, handle: int, enqueue: Callable[[], None]) -> tuple[int, str | None]:
    """Capture what `enqueue` puts on stream `handle` and instantiate it: (the executable graph, None), or
    (0, why it was refused). The capture is always ended, and the template graph destroyed."""
    try:
        driver.begin_capture(handle)
    except CudaError as exc:
        return 0, f"stream capture did not start: {exc}"
    refused: str | None = None
    try:
        enqueue()
    except CudaError as exc:  # TensorRT returns False from execute_async_v3 for work it cannot capture
        refused = str(exc)
    finally:
        status, graph = driver.end_capture(handle)
    if refused is None and (status != CUDA_SUCCESS or not graph):
        refused = f"cuStreamEndCapture returned {driver.error_name(status)}"
    executable = 0
    if refused is None:
        try:
            executable = driver.instantiate(graph)
        except CudaError as exc:
            refused = str(exc)
    if graph:
        driver.graph_destroy(graph)  # the executable graph keeps what it needs
    return (0, f"capture refused: {refused}") if refused is not None else (executable, None)
