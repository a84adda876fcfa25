"""The `synthetic` source: a deterministic generated scene, unpaced (also the demo's and the tests' frames).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from runtime.preprocess import Preprocessing, prepare_frame
from runtime.sources.base import Frame


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
