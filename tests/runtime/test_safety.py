from __future__ import annotations

import numpy as np
import pytest

from runtime.config import SafetyConfig
from runtime.safety import NON_FINITE_OUTPUT, OVERRUN, STALE_FRAME, SafetyLayer


def test_per_axis_velocity_limits() -> None:
    layer = SafetyLayer(SafetyConfig(max_velocity={"linear_x": 0.5}), action_dim=2)
    command = layer.command(np.array([0.9, -2.0], np.float32), now=0.0)
    assert (command.linear_x, command.linear_y, command.angular_z) == (0.5, -2.0, 0.0)
    assert not command.stop and command.seq == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_velocity_is_a_counted_zero_and_the_next_command_ramps(bad: float) -> None:
    layer = SafetyLayer(SafetyConfig(max_accel={"linear_x": 1.0}), action_dim=2)
    layer.command(np.array([0.05, 0.0], np.float32), now=0.0)
    zero = layer.command(np.array([0.05, bad], np.float32), now=0.1)
    assert zero.stop and zero.reason == NON_FINITE_OUTPUT == "non_finite_output"
    assert (zero.linear_x, zero.linear_y) == (0.0, 0.0)
    assert layer.stops == {NON_FINITE_OUTPUT: 1}
    again = layer.command(np.array([1.0, 0.0], np.float32), now=0.2)
    assert not again.stop and again.linear_x == pytest.approx(0.1)  # from zero, under the acceleration limit


def test_acceleration_limit_ramps_and_stop_is_immediate() -> None:
    layer = SafetyLayer(SafetyConfig(max_accel={"linear_x": 1.0, "linear_y": 2.0}), action_dim=2)
    target = np.array([1.0, 1.0], np.float32)
    layer.command(np.zeros(2, np.float32), now=0.0)
    first = layer.command(target, now=0.1)  # 0.1 s at 1 and 2 units/s²
    assert first.linear_x == pytest.approx(0.1) and first.linear_y == pytest.approx(0.2)
    second = layer.command(target, now=0.2)
    assert second.linear_x == pytest.approx(0.2) and second.linear_y == pytest.approx(0.4)
    stop = layer.stop(STALE_FRAME, now=0.25)
    assert stop.stop and stop.reason == STALE_FRAME and stop.linear_x == stop.linear_y == 0.0
    again = layer.command(target, now=0.35)  # ramps up from zero, not from 0.2
    assert again.linear_x == pytest.approx(0.1)
    assert layer.stops == {STALE_FRAME: 1}
    # a long gap allows no more than MAX_RAMP_DT worth of change
    assert layer.command(-target, now=100.0).linear_x == pytest.approx(0.1 - 0.2)


def test_stop_reasons_are_counted() -> None:
    layer = SafetyLayer(SafetyConfig(), action_dim=2)
    for _ in range(3):
        layer.stop(OVERRUN, 0.0)
    assert layer.stops == {OVERRUN: 3}
