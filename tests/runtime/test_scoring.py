from __future__ import annotations

import numpy as np
import pytest

from runtime.scoring import score, scores_table


def test_metrics_on_known_numbers() -> None:
    target = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0], [0.5, 0.5]])
    pred = np.array([[0.9, 0.04], [0.7, 1.0], [0.1, 1.0], [0.5, 0.5]])
    s = score(pred, target)
    assert s.mae == pytest.approx(np.abs(pred - target).mean())
    assert s.axes["linear_x"].accuracy[0.3] == 0.75  # errors 0.1, 0.3, 0.1, 0: 0.3 is not within 0.3
    assert s.axes["linear_x"].accuracy[0.2] == 0.75
    assert s.axes["linear_y"].accuracy[0.15] == 0.75  # the sign flip misses by 2.0
    assert s.all_axes_accuracy[0.15] == 0.5
    # 0.04 vs 0.0 is inside the ±0.05 dead band; +1 vs -1 and 0.1 vs 0.0 (moving vs standing) are errors
    assert s.axes["linear_y"].direction == 0.75 and s.axes["linear_x"].direction == 0.75
    assert s.axes["linear_x"].pearson == pytest.approx(np.corrcoef(pred[:, 0], target[:, 0])[0, 1])
    ss_res = ((target[:, 0] - pred[:, 0]) ** 2).sum()
    ss_tot = ((target[:, 0] - target[:, 0].mean()) ** 2).sum()
    assert s.axes["linear_x"].r2 == pytest.approx(1 - ss_res / ss_tot)
    table = scores_table({"fp32": s, "int8": s})
    assert "linear_y direction" in table and "75.0%" in table and "fp32" in table.splitlines()[0]


def test_values_straddling_the_dead_band_edge_agree() -> None:
    s = score(np.array([[0.049]]), np.array([[0.051]]))
    assert s.direction == 1.0
