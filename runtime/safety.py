"""The safety layer between the policy and the base: per-axis limits, acceleration limits and the deadman.

Every command the runtime publishes is made here. A policy velocity goes through `command()`: clipped to the per-axis
velocity limits, then rate-limited against the previous command so no axis changes faster than its acceleration
limit. `stop(reason)` makes a zero command, immediately (no ramp: a deadman must not coast), and the next policy
command ramps up from zero again. The deadman reasons are named constants, so logs, reports and tests agree.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from runtime.config import AXES, SafetyConfig
from runtime.sinks import VelocityCommand

log = logging.getLogger("runtime.safety")

STALE_FRAME = "stale frame"
OVERRUN = "overrun"
NO_INSTRUCTION = "no instruction"
SINK_RECOVERED = "sink recovered"
SHUTDOWN = "shutdown"
MEMORY_GUARD = "memory guard"
CAPTURE_FAILED = "capture failed"
MAX_RAMP_DT = 0.2  # s: after a longer gap, accelerate as if only this much time had passed


class SafetyLayer:
    """Turns policy velocities into commands. Not thread-safe: one thread (the loop or the control loop) owns it."""

    def __init__(self, settings: SafetyConfig, action_dim: int) -> None:
        if action_dim > len(AXES):
            raise ValueError(f"bug: {action_dim} action dims, the base has {len(AXES)} axes")
        self.settings = settings
        self.axes = AXES[:action_dim]
        inf = np.float32(np.inf)
        self._vmax = np.array([settings.max_velocity.get(a, inf) for a in self.axes], dtype=np.float32)
        self._amax = np.array([settings.max_accel.get(a, inf) for a in self.axes], dtype=np.float32)
        self._limit_accel = bool(np.isfinite(self._amax).any())
        self._last = np.zeros(action_dim, dtype=np.float32)
        self._target = np.zeros(action_dim, dtype=np.float32)
        self._last_time: float | None = None
        self._seq = 0
        self.stops: dict[str, int] = {}  # reason -> zero commands sent for it
        self._stopped_for = ""

    def _make(self, values: np.ndarray, stop: bool, reason: str, latency_ms: float | None) -> VelocityCommand:
        self._seq += 1
        axes = dict(zip(self.axes, (float(v) for v in values), strict=True))
        return VelocityCommand(seq=self._seq, stamp=time.time(), stop=stop, reason=reason, latency_ms=latency_ms,
                               **axes)

    def command(self, velocity: np.ndarray, now: float, latency_ms: float | None = None) -> VelocityCommand:
        """A policy velocity, limited per axis and in acceleration (`now`: time.monotonic())."""
        np.clip(velocity, -self._vmax, self._vmax, out=self._target)
        if self._limit_accel:
            dt = MAX_RAMP_DT if self._last_time is None else min(max(now - self._last_time, 0.0), MAX_RAMP_DT)
            step = self._amax * np.float32(dt)
            np.clip(self._target, self._last - step, self._last + step, out=self._target)
        self._last[...] = self._target
        self._last_time = now
        if self._stopped_for:
            log.info("resuming after stop (%s)", self._stopped_for)
            self._stopped_for = ""
        return self._make(self._last, False, "", latency_ms)

    def stop(self, reason: str, now: float) -> VelocityCommand:
        """A zero command; the next `command()` ramps up from zero."""
        self._last[...] = 0.0
        self._last_time = now
        self.stops[reason] = self.stops.get(reason, 0) + 1
        if reason != self._stopped_for:
            log.warning("zero velocity: %s", reason)
            self._stopped_for = reason
        return self._make(self._last, True, reason, None)
