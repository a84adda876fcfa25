"""Frame sources for the minimal runtime: `synthetic[:N]` and `h5:PATH` (replay of recorded episodes).

Every source yields `Frame`s whose pixels are already the vision graph's `(S, S, C)` uint8 frame, so the pipeline
does the same work whatever the source. Camera sources (GStreamer) join in issue 4.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import MobileVLAError
from runtime.preprocess import COLOR_ORDERS, Preprocessing, prepare_frame

H5_SUFFIXES = (".h5", ".hdf5")


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


def episode_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in H5_SUFFIXES)
        if not files:
            raise MobileVLAError(f"{path} holds no .h5/.hdf5 episode files; point h5: at an episode or a directory")
        return files
    raise MobileVLAError(f"episode path {path} does not exist; expected h5:FILE.h5 or h5:DIRECTORY")


def read_instruction(h5file: Any) -> str | None:
    if "language_instruction" in h5file:
        value = h5file["language_instruction"][()]
    elif "language_instruction" in h5file.attrs:
        value = h5file.attrs["language_instruction"]
    else:
        return None
    if isinstance(value, np.ndarray):
        value = value.flat[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def h5_source(path: Path, pre: Preprocessing, color: str, frames: int | None) -> Iterator[Frame]:
    """Replay episodes frame by frame (lazily: a 720p episode is ~50 MB) through the one preprocessing path."""
    try:
        import h5py
    except ImportError as exc:
        raise MobileVLAError("h5: sources need h5py; install it with `pip install h5py`") from exc
    if color not in COLOR_ORDERS:
        raise MobileVLAError(f"unknown episode colour order {color!r}; expected one of {COLOR_ORDERS}")
    emitted = 0
    for file in episode_files(path):
        try:
            handle = h5py.File(file, "r")
        except OSError as exc:
            raise MobileVLAError(f"{file} is not a readable HDF5 episode ({exc})") from exc
        with handle:
            if "images" not in handle:
                raise MobileVLAError(f"{file} has no `images` dataset; expected (N, H, W, 3) uint8 frames")
            images = handle["images"]
            actions = handle["actions"] if "actions" in handle else None
            name = str(handle.attrs.get("episode_name", file.stem))
            instruction = read_instruction(handle)
            for i in range(images.shape[0]):
                if frames is not None and emitted >= frames:
                    return
                action = None if actions is None or i >= actions.shape[0] else np.asarray(actions[i])
                pixels = prepare_frame(np.asarray(images[i]), color, pre)
                yield Frame(i, time.time(), pixels, name, i == 0, instruction, action)
                emitted += 1


def open_source(spec: str, pre: Preprocessing, frames: int | None, h5_color: str = "bgr") -> Iterator[Frame]:
    """`synthetic` or `h5:PATH`; `frames` caps the count (None: until the source ends)."""
    if spec == "synthetic":
        return synthetic_source(pre, frames)
    if spec.startswith("h5:"):
        return h5_source(Path(spec[3:]), pre, h5_color, frames)
    raise MobileVLAError(f"unknown source {spec!r}; expected `synthetic` or `h5:PATH`")
