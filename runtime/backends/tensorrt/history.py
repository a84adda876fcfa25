"""The feature-history rule on the device as pure functions (docs/design.md §2.3, `runtime/specs.py`): the features of
the last min(t, window) frames, left-aligned; while filling, the trunk writes slot t; once full, the window shifts
left by one row and the trunk writes the last slot (runtime/backends/tensorrt/backend.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.backends.tensorrt.runner import TENSOR_ALIGNMENT


@dataclass(frozen=True)
class HistoryPlan:
    write_slot: int  # the history row this frame's feature goes to
    shift: bool  # first move rows 1.. to 0.. (the window is full; the oldest frame drops out)
    new_len: int  # the head's history_len for this frame

    @property
    def steady(self) -> bool:
        """Fixed addresses every frame: the state a CUDA graph is captured in."""
        return self.shift


NO_HISTORY = HistoryPlan(write_slot=0, shift=False, new_len=1)  # a bundle without a window part


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


def shift_rows(cuda: Any, stream: Any, history: int, scratch: int, rows: int, row_bytes: int) -> None:
    """History rows 1..W-1 -> 0..W-2 on the device, through `scratch` (cuMemcpy with overlapping ranges is
    undefined)."""
    from runtime.backends.cuda import cuda_call

    size = rows * row_bytes
    cuda_call("cuMemcpyDtoDAsync(history -> scratch)", cuda.memcpy_dtod_async, scratch, history + row_bytes, size,
              stream)
    cuda_call("cuMemcpyDtoDAsync(scratch -> history)", cuda.memcpy_dtod_async, history, scratch, size, stream)
