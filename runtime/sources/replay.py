"""Replayed sources: `h5:PATH` (recorded episodes, with their instruction and recorded actions, through the one
preprocessing path) and `synthetic`, as finite or unpaced iterators wrapped by `ReplaySource`, delivered as fast as
they are asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from runtime.episodes import iter_episode_frames, scan_episodes
from runtime.errors import MobileVLAError
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice
from runtime.sources.base import CaptureResult, Frame, Skipped
from runtime.sources.spec import ReplaySpec, SyntheticSpec
from runtime.sources.synthetic import synthetic_source

log = logging.getLogger("runtime.sources")


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


def replay_frames(spec: ReplaySpec, pre: Preprocessing, frames: int | None, h5_color: str = "bgr",
                  require_actions: bool = False, action_dim: int = 2,
                  skipped: Skipped | None = None) -> Iterator[Frame]:
    """The frames of `synthetic` or `h5:PATH`; `frames` caps the count (None: until the source ends)."""
    if isinstance(spec, SyntheticSpec):
        if require_actions:
            raise MobileVLAError("the synthetic source has no recorded actions to score against; use --source h5:DIR")
        return synthetic_source(pre, frames)
    return h5_source(spec.path, pre, h5_color, frames, require_actions, action_dim, skipped)


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
