"""Frame sources for the minimal runtime: `synthetic[:N]` and `h5:PATH` (replay of recorded episodes).

Every source yields `Frame`s whose pixels are already the vision graph's `(S, S, C)` uint8 frame, so the pipeline
does the same work whatever the source. Camera sources (GStreamer) join in issue 4.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.episodes import iter_episode_frames, scan_episodes
from runtime.errors import MobileVLAError
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice, prepare_frame


@dataclass
class Frame:
    index: int  # frame index within its episode
    timestamp: float
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
        yield Frame(index, time.time(), synthetic_frame(index, pre), new_episode=index == 0)
        index += 1


def h5_source(path: Path, pre: Preprocessing, color: str, frames: int | None,
              require_actions: bool = False, action_dim: int = 2) -> Iterator[Frame]:
    """Replay episodes frame by frame (lazily) through the one preprocessing path; bad episodes are skipped."""
    check_choice("episode colour order", color, COLOR_ORDERS)
    scan = scan_episodes(path, require_actions, action_dim)
    emitted = 0
    for info in scan.episodes:
        for item in iter_episode_frames(info, color, pre, action_dim):
            if frames is not None and emitted >= frames:
                return
            yield Frame(item.index, time.time(), item.pixels, info.name, item.index == 0, info.instruction,
                        item.action)
            emitted += 1


def open_source(spec: str, pre: Preprocessing, frames: int | None, h5_color: str = "bgr",
                require_actions: bool = False, action_dim: int = 2) -> Iterator[Frame]:
    """`synthetic` or `h5:PATH`; `frames` caps the count (None: until the source ends)."""
    if spec == "synthetic":
        if require_actions:
            raise MobileVLAError("the synthetic source has no recorded actions to score against; use --source h5:DIR")
        return synthetic_source(pre, frames)
    if spec.startswith("h5:"):
        return h5_source(Path(spec[3:]), pre, h5_color, frames, require_actions, action_dim)
    raise MobileVLAError(f"unknown source {spec!r}; expected `synthetic` or `h5:PATH`")
