"""The safety layer between the policy and the base: per-axis limits, acceleration limits and the deadman.

Every command the runtime publishes is made here. A policy velocity goes through `command()`: clipped to the per-axis
velocity limits, then rate-limited against the previous command so no axis changes faster than its acceleration
limit. `stop(reason)` makes a zero command, immediately (no ramp: a deadman must not coast), and the next policy
command ramps up from zero again. The deadman reasons are named constants, so logs, reports and tests agree.

A policy velocity that is not finite (NaN or ±inf: NaN weights, an FP16 overflow on the device) is a fault, not a
command: `command()` turns it into a zero with reason `non_finite_output`, counted like every other stop.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from runtime.config import SafetyConfig
from runtime.sinks.base import AXES, RECOVERED_REASON, SHUTDOWN_REASON, VelocityCommand

log = logging.getLogger("runtime.safety")

STALE_FRAME = "stale frame"
OVERRUN = "overrun"
NO_INSTRUCTION = "no instruction"
SINK_RECOVERED = RECOVERED_REASON
SHUTDOWN = SHUTDOWN_REASON
MEMORY_GUARD = "memory guard"
CAPTURE_FAILED = "capture failed"
NON_FINITE_OUTPUT = "non_finite_output"
FAULT = "fault"  # an exception ended the run (in the loop or the async control thread)
MAX_RAMP_DT = 0.2  # s: after a longer gap, accelerate as if only this much time had passed


class SafetyLayer:
    """Turns policy velocities into commands. Not thread-safe: one thread (the loop or the control loop) owns it."""

    def __init__(self, settings: SafetyConfig, action_dim: int) -> None:
        if action_dim > len(AXES):
            raise ValueError(f"bug: {action_dim} action dims, the base has {len(AXES)} axes")
        self.settings = settings
        self.axes = AXES[:action_dim]
        inf = float("inf")
        self._vmax = [settings.max_velocity.get(axis, inf) for axis in self.axes]
        self._amax = [settings.max_accel.get(axis, inf) for axis in self.axes]
        self._limit_accel = any(limit < inf for limit in self._amax)
        # Plain floats: for two or three axes Python arithmetic is several times cheaper than numpy calls.
        self._last = [0.0] * action_dim
        self._last_time: float | None = None
        self._seq = 0
        self.stops: dict[str, int] = {}  # reason -> zero commands sent for it
        self._stopped_for = ""

    def _make(self, values: list[float], stop: bool, reason: str, latency_ms: float | None) -> VelocityCommand:
        self._seq += 1
        axes = dict(zip(self.axes, values, strict=True))
        return VelocityCommand(seq=self._seq, stamp=time.time(), stop=stop, reason=reason, latency_ms=latency_ms,
                               **axes)

    def command(self, velocity: np.ndarray, now: float, latency_ms: float | None = None) -> VelocityCommand:
        """A policy velocity, limited per axis and in acceleration (`now`: time.monotonic()); a non-finite one is
        a zero with reason `non_finite_output`."""
        values = velocity.tolist()  # one call to Python floats: cheaper than touching numpy scalars one by one
        if not all(map(math.isfinite, values)):
            return self.stop(NON_FINITE_OUTPUT, now)
        target = [min(max(v, -vmax), vmax) for v, vmax in zip(values, self._vmax, strict=True)]
        if self._limit_accel:
            dt = MAX_RAMP_DT if self._last_time is None else min(max(now - self._last_time, 0.0), MAX_RAMP_DT)
            target = [min(max(v, last - amax * dt), last + amax * dt)
                      for v, last, amax in zip(target, self._last, self._amax, strict=True)]
        self._last = target
        self._last_time = now
        if self._stopped_for:
            log.info("resuming after stop (%s)", self._stopped_for)
            self._stopped_for = ""
        return self._make(target, False, "", latency_ms)

    @property
    def holding(self) -> str:
        """The reason of the zero the robot is held at; "" while policy commands flow."""
        return self._stopped_for

    def stop(self, reason: str, now: float) -> VelocityCommand:
        """A zero command; the next `command()` ramps up from zero."""
        self._last = [0.0] * len(self.axes)
        self._last_time = now
        self.stops[reason] = self.stops.get(reason, 0) + 1
        if reason != self._stopped_for:
            log.log(logging.INFO if reason == SHUTDOWN else logging.WARNING, "zero velocity: %s", reason)
            self._stopped_for = reason
        return self._make(self._last, True, reason, None)
