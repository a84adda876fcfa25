"""Action scheduling: which velocity of the predicted chunks is executed, and when.

- `chunk0` (default, RoboVLMs behaviour): each new chunk's element 0, published right after inference.
- `ensemble`: temporal ensembling over overlapping chunks, ACT's convention (Zhao et al. 2023, `imitate_episodes.py`):
  the chunk predicted k frames ago holds, at index k, its prediction for now; the m predictions for now are averaged
  with weights exp(-decay · i), i = 0 the oldest (decay 0: plain mean; ACT's default 0.01; larger: the oldest
  prediction dominates, which smooths most). It assumes one frame per chunk step, as in training.
- `async`: inference runs at its own rate and hands each chunk over with its frame's capture time; a control loop
  publishes at a fixed rate the element for "now": index floor((now − capture) / step_s). Past the chunk's end
  there is nothing left to execute: the caller's deadman stops the robot.

All buffers are allocated once; nothing is allocated per frame.
"""

from __future__ import annotations

import math
import threading

import numpy as np


class EnsembleScheduler:
    """Temporal ensembling over the last `n` chunks, weighted as ACT does (module docstring)."""

    def __init__(self, chunk: int, dim: int, decay: float) -> None:
        self.n = chunk
        self._chunks = np.zeros((chunk, chunk, dim), dtype=np.float32)  # ring: slot -> chunk predicted at that frame
        self._count = 0
        self._weights = np.exp(-decay * np.arange(chunk, dtype=np.float32)).astype(np.float32)
        self._out = np.zeros(dim, dtype=np.float32)

    def reset(self) -> None:
        self._count = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add this frame's chunk; returns the ensembled velocity for this frame (a view, valid until next push)."""
        self._chunks[self._count % self.n] = chunk
        self._count += 1
        self._out[...] = 0.0
        total = 0.0
        contributors = min(self._count, self.n)
        for age in range(contributors):
            slot = (self._count - 1 - age) % self.n
            weight = float(self._weights[contributors - 1 - age])  # ACT: index 0 is the oldest prediction
            self._out += weight * self._chunks[slot, age]
            total += weight
        self._out /= total
        return self._out


class LatestChunk:
    """The hand-over between inference and the async control loop: the newest chunk and its frame's capture time."""

    def __init__(self, chunk: int, dim: int, step_s: float) -> None:
        self.step_s = step_s
        self._chunk = np.zeros((chunk, dim), dtype=np.float32)
        self._out = np.zeros(dim, dtype=np.float32)
        self._capture_time = -math.inf
        self._lock = threading.Lock()

    def put(self, chunk: np.ndarray, capture_time: float) -> None:
        with self._lock:
            self._chunk[...] = chunk
            self._capture_time = capture_time

    def clear(self) -> None:
        with self._lock:
            self._capture_time = -math.inf

    def at(self, now: float) -> tuple[np.ndarray | None, float]:
        """(velocity for `now`, its frame's capture time); velocity None when no chunk covers `now`."""
        with self._lock:
            index = math.floor((now - self._capture_time) / self.step_s) if self._capture_time > -math.inf else -1
            if not 0 <= index < len(self._chunk):
                return None, self._capture_time
            self._out[...] = self._chunk[index]
            return self._out, self._capture_time

