"""`runtime/schedule.py`: temporal ensembling of overlapping chunks, and the async hand-over by time since capture."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.schedule import EnsembleScheduler, LatestChunk


def test_ensemble_weights_overlapping_predictions() -> None:
    n = 10
    scheduler = EnsembleScheduler(n, 1, decay=0.0)
    chunks = [np.arange(n, dtype=np.float32)[:, None] + 100 * t for t in range(3)]
    assert scheduler.push(chunks[0])[0] == 0.0  # only chunk 0, element 0
    # frame 1: chunk 1 element 0 (100) and chunk 0 element 1 (1), plain mean
    assert scheduler.push(chunks[1])[0] == pytest.approx((100 + 1) / 2)
    assert scheduler.push(chunks[2])[0] == pytest.approx((200 + 101 + 2) / 3)
    decayed = EnsembleScheduler(n, 1, decay=1.0)
    decayed.push(chunks[0])
    w = np.exp(-1.0)
    # ACT's convention: weight exp(-k * i), i = 0 the oldest prediction (chunk 0's element 1), i = 1 the newest
    assert decayed.push(chunks[1])[0] == pytest.approx((1 + w * 100) / (1 + w))
    assert decayed.push(chunks[2])[0] == pytest.approx((2 + w * 101 + w * w * 200) / (1 + w + w * w))
    decayed.reset()
    assert decayed.push(chunks[2])[0] == 200.0


def test_latest_chunk_indexes_by_time_since_capture() -> None:
    latest = LatestChunk(10, 2, step_s=0.1)
    assert latest.at(5.0)[0] is None
    chunk = np.arange(20, dtype=np.float32).reshape(10, 2)
    latest.put(chunk, capture_time=5.0)
    np.testing.assert_array_equal(latest.at(5.0)[0], chunk[0])
    np.testing.assert_array_equal(latest.at(5.25)[0], chunk[2])
    assert latest.at(6.01)[0] is None  # past the chunk's end
    latest.clear()
    assert latest.at(5.0)[0] is None
