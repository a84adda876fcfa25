"""The runtime's health as one diagnostic status (what ROS 2's `/diagnostics` carries, runtime/dds/diagnostics.py
publishes it at 1 Hz): a level, a one-line message, and key/value pairs (FPS, latency, memory, temperatures, zero
commands by reason, backend). Pure: the loop's `status()` and the health monitor's latest reading in, a report out.

Levels, worst first: ERROR when no frame has reached the policy for `frame_deadline_s` (or none yet); WARN while the
robot is held at zero (the last command was a deadman zero), or memory or a temperature passed its warning level
(config `monitor`); else OK."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.config import RuntimeConfig
from runtime.health.base import HealthReading

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = ("OK", "WARN", "ERROR", "STALE")


@dataclass
class LoopStatus:
    """What the loop reports about itself (RuntimeLoop.status(); safe to take from another thread)."""

    frames: int  # frames run through the policy
    last_frame_at: float | None  # time.monotonic() of the newest frame's capture; None before the first
    last_latency_ms: float | None  # capture-to-command latency of the newest policy command
    holding: str  # "" while moving, else the reason of the zero the robot is held at
    stops: dict[str, int] = field(default_factory=dict)  # zero commands by reason
    backend: str = ""
    source: str = ""
    instruction: str | None = None


@dataclass
class DiagnosticReport:
    level: int
    message: str
    values: list[tuple[str, str]]


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def diagnose(status: LoopStatus, fps: float, reading: HealthReading | None, config: RuntimeConfig,
             now: float) -> DiagnosticReport:
    """The report for one moment (`now`: time.monotonic())."""
    age = None if status.last_frame_at is None else now - status.last_frame_at
    values = [("fps", f"{fps:.2f}"), ("frames", str(status.frames)),
              ("frame_age_ms", _number(None if age is None else age * 1e3)),
              ("latency_ms", _number(status.last_latency_ms)), ("backend", status.backend),
              ("source", status.source), ("instruction", status.instruction or ""),
              ("holding_zero", status.holding or "no"),
              ("zero_commands", str(sum(status.stops.values())))]
    values += [(f"zero_commands.{reason}", str(count)) for reason, count in sorted(status.stops.items())]
    problems: list[tuple[int, str]] = []
    if age is None or age > config.safety.frame_deadline_s:
        waited = "no frame yet" if age is None else f"no frame for {age:.1f} s"
        problems.append((ERROR, f"{waited} from {status.source}"))
    if status.holding:
        problems.append((WARN, f"holding zero velocity: {status.holding}"))
    if reading is not None:
        values += [("rss_mb", _number(reading.rss_mb)), ("mem_available_mb", _number(reading.mem_available_mb)),
                   ("swap_used_mb", _number(reading.swap_used_mb)), ("power_w", _number(reading.power_w)),
                   ("gpu_util", _number(reading.gpu_util)), ("monitor", reading.source)]
        values += [(f"temp_c.{zone}", _number(temp)) for zone, temp in sorted(reading.temps_c.items())]
        if reading.mem_available_mb < config.monitor.warn_available_mb:
            problems.append((WARN, f"MemAvailable {reading.mem_available_mb:.0f} MB"))
        hot = [f"{zone} {temp:.0f} C" for zone, temp in reading.temps_c.items() if temp >= config.monitor.warn_temp_c]
        if hot:
            problems.append((WARN, "hot: " + ", ".join(hot)))
    level = max((lvl for lvl, _ in problems), default=OK)
    summary = f"{fps:.1f} FPS on {status.backend}"
    message = "; ".join(text for _, text in sorted(problems, key=lambda p: -p[0])) or summary
    return DiagnosticReport(level, message if level == OK else f"{message} ({summary})", values)
