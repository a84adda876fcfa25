"""`runtime/backends/tensorrt/history.py`: the history rule on the device."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.tensorrt.history import history_plan


@pytest.mark.parametrize("window", [1, 2, 3, 8])
def test_history_plan_keeps_the_last_frames_left_aligned_with_zero_rows_after(window: int) -> None:
    """Applying the plan (shift via a scratch copy, write one row) gives the ONNX head's expected window."""
    history = np.zeros((window, 2), np.float32)
    count = 0
    features = []
    for t in range(3 * window + 2):
        if t == 2 * window:  # reset mid-episode
            history[...] = 0
            count = 0
            features = []
        feature = np.full(2, t + 1, np.float32)
        features.append(feature)
        plan = history_plan(count, window)
        if plan.shift:
            scratch = history[1:].copy()
            history[:-1] = scratch
        history[plan.write_slot] = feature
        count = plan.new_len
        k = min(len(features), window)
        assert count == k and plan.steady == (len(features) > window)
        np.testing.assert_array_equal(history[:k], np.stack(features[-k:]))
        assert not history[k:].any()
    with pytest.raises(ValueError):
        history_plan(window + 1, window)
