"""What every frame source delivers (docs/design.md §3): `read_into(dest, timeout_s) -> CaptureResult` copies the newest
frame, already the vision graph's `(S, S, C)` uint8 frame, into the backend's input buffer, so the pipeline does
the same work whatever the source. `Frame` is one replayed frame before it is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.errors import MobileVLAError


@dataclass
class Frame:
    index: int  # frame index within its episode
    pixels: np.ndarray  # (S, S, C) uint8 in the bundle's frame_format
    episode: str = "synthetic"
    new_episode: bool = False
    instruction: str | None = None
    recorded_action: np.ndarray | None = None


Skipped = list[tuple[str, str]]  # (episode, why): episodes a replay left out


@dataclass
class CaptureResult:
    """What one `read_into` delivered."""

    status: str  # "frame" (copied into dest), "repeat" (same buffer timestamp again: nothing copied),
    # "timeout" (no new frame within the wait), "end" (a file or replay ran out)
    index: int  # frames delivered so far
    capture_time: float  # time.monotonic() at capture (camera buffer timestamp where known, else arrival)
    pts_ns: int | None = None
    copy_ms: float = 0.0  # time spent copying the frame into dest
    episode: str = ""
    episode_frame: int | None = None  # replay: the frame's index within its episode
    new_episode: bool = False
    instruction: str | None = None  # a replayed episode's own instruction
    recorded_action: np.ndarray | None = None


class FrameSource(Protocol):
    @property
    def description(self) -> str: ...

    def start(self) -> None: ...

    def read_into(self, dest: np.ndarray, timeout_s: float) -> CaptureResult: ...

    def stop(self) -> None: ...


class CaptureError(MobileVLAError):
    """The camera stopped delivering frames and reconnecting did not bring it back."""
