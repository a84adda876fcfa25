"""Frame sources. Every source has `read_into(dest, timeout_s) -> CaptureResult`: it copies the newest frame, already
the vision graph's `(S, S, C)` uint8 frame, into the backend's input buffer, so the pipeline does the same work
whatever the source.

- `synthetic` (a generated scene) and `h5:PATH` (replay of recorded episodes, with their instruction and recorded
  actions) are finite or unpaced iterators wrapped by `ReplaySource`.
- Camera and video sources (`csi`, `v4l2:`, `file:`, `test`, `gst:`) are GStreamer pipelines (`runtime/capture.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from runtime.config import SourceConfig
from runtime.episodes import iter_episode_frames, scan_episodes
from runtime.errors import MobileVLAError
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice, prepare_frame

log = logging.getLogger("runtime.sources")


@dataclass
class Frame:
    index: int  # frame index within its episode
    pixels: np.ndarray  # (S, S, C) uint8 in the bundle's frame_format
    episode: str = "synthetic"
    new_episode: bool = False
    instruction: str | None = None
    recorded_action: np.ndarray | None = None


def synthetic_frame(index: int, pre: Preprocessing) -> np.ndarray:
    """A deterministic scene: a gradient floor and a coloured box that sweeps across the view."""
    size = pre.image_size
    rows = np.linspace(40, 200, size, dtype=np.float32)[:, None]
    cols = np.linspace(0, 60, size, dtype=np.float32)[None, :]
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    rgb[..., 0] = (rows * 0.6 + cols).astype(np.uint8)
    rgb[..., 1] = (rows * 0.8).astype(np.uint8)
    rgb[..., 2] = (200 - rows * 0.5 + cols).astype(np.uint8)
    box = size // 4
    x = int((index * 13) % (size - box))
    y = size // 3 + int(20 * np.sin(index / 3.0))
    rgb[y : y + box, x : x + box] = ((index * 37) % 255, 40, 255 - (index * 37) % 255)
    return prepare_frame(rgb, "rgb", pre)


def synthetic_source(pre: Preprocessing, frames: int | None) -> Iterator[Frame]:
    index = 0
    while frames is None or index < frames:
        yield Frame(index, synthetic_frame(index, pre), new_episode=index == 0)
        index += 1


Skipped = list[tuple[str, str]]  # (episode, why): episodes a replay left out


def h5_source(path: Path, pre: Preprocessing, color: str, frames: int | None,
              require_actions: bool = False, action_dim: int = 2, skipped: Skipped | None = None) -> Iterator[Frame]:
    """Replay episodes frame by frame (lazily) through the one preprocessing path.

    A bad episode is skipped with a warning and appended to `skipped`: refused by the scan (not HDF5, wrong
    shapes), or damaged part-way (a chunk that cannot be read): the replay goes on with the next episode, and a
    scorer drops the frames it already had from it.
    """
    check_choice("episode colour order", color, COLOR_ORDERS)
    scan = scan_episodes(path, require_actions, action_dim)
    if skipped is not None:
        skipped.extend((file.name, why) for file, why in scan.skipped)
    emitted = 0
    for info in scan.episodes:
        try:
            for item in iter_episode_frames(info, color, pre, action_dim):
                if frames is not None and emitted >= frames:
                    return
                yield Frame(item.index, item.pixels, info.name, item.index == 0, info.instruction,
                            item.action)
                emitted += 1
        except MobileVLAError as exc:
            log.warning("episode %s skipped part-way, the replay goes on with the next one: %s", info.name, exc)
            if skipped is not None:
                skipped.append((info.name, str(exc)))


def replay_frames(spec: str, pre: Preprocessing, frames: int | None, h5_color: str = "bgr",
                  require_actions: bool = False, action_dim: int = 2,
                  skipped: Skipped | None = None) -> Iterator[Frame]:
    """The frames of `synthetic` or `h5:PATH`; `frames` caps the count (None: until the source ends)."""
    if spec == "synthetic":
        if require_actions:
            raise MobileVLAError("the synthetic source has no recorded actions to score against; use --source h5:DIR")
        return synthetic_source(pre, frames)
    if spec.startswith("h5:"):
        return h5_source(Path(spec[3:]), pre, h5_color, frames, require_actions, action_dim, skipped)
    raise MobileVLAError(f"unknown source {spec!r}; expected {SOURCE_FORMS}")


SOURCE_FORMS = "`csi[:SENSOR_ID]`, `v4l2:/dev/videoN`, `file:PATH`, `test`, `gst:DESCRIPTION`, `synthetic` or `h5:PATH`"


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


class ReplaySource:
    """A `FrameSource` over replayed frames (synthetic or h5), delivered as fast as they are asked for."""

    def __init__(self, frames: Iterator[Frame], description: str, skipped: Skipped | None = None) -> None:
        self._frames = frames
        self._description = description
        self._count = 0
        self.skipped: Skipped = [] if skipped is None else skipped  # episodes left out (h5), filled while replaying

    @property
    def description(self) -> str:
        return self._description

    def start(self) -> None:
        pass

    def read_into(self, dest: np.ndarray, timeout_s: float) -> CaptureResult:
        frame = next(self._frames, None)
        if frame is None:
            return CaptureResult("end", self._count, time.monotonic())
        captured = time.monotonic()
        np.copyto(dest, frame.pixels)
        copy_ms = (time.monotonic() - captured) * 1e3
        self._count += 1
        return CaptureResult("frame", self._count, captured, None, copy_ms, frame.episode, frame.index,
                             frame.new_episode, frame.instruction, frame.recorded_action)

    def stop(self) -> None:
        pass

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def open_source(config: SourceConfig, pre: Preprocessing, frames: int | None = None, require_actions: bool = False,
                action_dim: int = 2) -> FrameSource:
    """The source `config.spec` names: a GStreamer capture, or a replay of synthetic / h5 frames."""
    from runtime import capture  # GStreamer itself is imported only when a capture starts

    if capture.is_capture_spec(config.spec):
        if require_actions:
            raise MobileVLAError(f"source {config.spec} has no recorded actions to score against; use --source h5:DIR")
        settings = capture.CaptureSettings(
            sensor_mode=config.sensor_mode, fps=config.fps, flip_method=config.flip_method,
            stall_timeout_s=config.stall_timeout_s, first_frame_timeout_s=config.first_frame_timeout_s,
            reconnect_attempts=config.reconnect_attempts, backoff_s=config.backoff_s,
            backoff_max_s=config.backoff_max_s, file_sync=config.file_sync, file_loop=config.file_loop,
        )
        return capture.GstCapture(config.spec, pre, settings)
    skipped: Skipped = []
    replay = replay_frames(config.spec, pre, frames, config.h5_color, require_actions, action_dim, skipped)
    return ReplaySource(replay, config.spec, skipped)
