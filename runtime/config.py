"""The runtime's settings: one dataclass per config section, and their validation (the file is read by
runtime/config_file.py: `--config FILE`, else /etc/mobile-vla/runtime.yaml, else built-in defaults).

Every key is validated here, once; an error names the key, the value and what is allowed. Command-line flags
override the file (the CLI applies them on top of the loaded config). Every setting is documented in docs/runtime.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from runtime.errors import MobileVLAError, range_problem
from runtime.prompt import OVER_LONG
from runtime.sinks.base import AXES
from runtime.sources import spec as source_spec

BACKENDS = ("auto", "tensorrt", "onnxruntime")
RUNTIME_PRECISIONS = ("auto", "fp32", "fp16", "int8")
SCHEDULE_MODES = ("chunk0", "ensemble", "async")
CONTROL_KINDS = ("auto", "ros2", "udp", "none")
MONITOR_SOURCES = ("auto", "jtop", "tegrastats", "proc")
# Upper bounds. Every number must be finite: `frame_deadline_s: .inf` would switch the deadman off.
MAX_OUTPUT_SCALE = 10.0  # the team's server used 1.15; a larger gain is a typo, not a tuning
MAX_VELOCITY = 10.0  # m/s or rad/s: far above any small mobile base
MAX_ACCEL = 100.0  # per s²
MAX_DEADLINE_S = 5.0  # a deadman that waits longer than this is no deadman
MAX_TIMEOUT_S = 600.0
MAX_BACKOFF_S = 3600.0
MAX_MEMORY_MB = 1e9  # only "finite": a guard test sets the thresholds above any real memory


@dataclass(frozen=True)
class SourceConfig:
    spec: str = "synthetic"
    h5_color: str = "bgr"
    sensor_mode: tuple[int, int] = (1280, 720)
    fps: int = 30
    flip_method: int = 0
    stall_timeout_s: float = 1.0
    first_frame_timeout_s: float = 5.0
    reconnect_attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    file_sync: bool = True
    file_loop: bool = False

    @functools.cached_property
    def parsed(self) -> source_spec.SourceSpec:
        """`spec` as a typed spec, parsed once; MobileVLAError naming the accepted forms when it is none of them."""
        return source_spec.parse_source(self.spec)


@dataclass(frozen=True)
class InstructionConfig:
    text: str | None = None  # None: the bundle's default instruction (unless use_bundle_default is false)
    use_bundle_default: bool = True
    over_long: str = "reject"
    control: str = "auto"  # how instructions change at run time
    udp_host: str = "127.0.0.1"
    udp_port: int = 5610
    ros2_topic: str = "/mobile_vla/instruction"


@dataclass(frozen=True)
class ScheduleConfig:
    mode: str = "chunk0"
    ensemble_decay: float = 0.5  # weight of a prediction made k frames ago: exp(-decay * k)
    rate_hz: float = 30.0  # async: the control loop's publish rate
    step_s: float = 0.1  # async: time between consecutive chunk elements (the training data's control period)


@dataclass(frozen=True)
class SafetyConfig:
    scale: float | None = None  # None: the bundle's output_scale
    limit: float | None = None  # symmetric clip on every axis; None: the bundle's output_limit
    max_velocity: dict[str, float] = field(default_factory=dict)  # per-axis |v| limit
    max_accel: dict[str, float] = field(default_factory=dict)  # per-axis |dv/dt| limit (units/s²)
    frame_deadline_s: float = 0.25  # newest frame older than this: zero
    max_latency_s: float = 0.5  # capture-to-command latency above this (inference overran): zero


@dataclass(frozen=True)
class MonitorConfig:
    enabled: bool = True
    interval_s: float = 1.0
    source: str = "auto"
    warn_available_mb: float = 1024.0
    guard_available_mb: float = 384.0
    warn_temp_c: float = 85.0
    warn_swap_mb: float = 256.0


@dataclass(frozen=True)
class RuntimeConfig:
    bundle: Path | None = None  # None: $MOBILE_VLA_BUNDLE or ~/.cache/mobile-vla/bundle
    backend: str = "auto"
    precision: str = "auto"
    threads: int = 0
    verify_bundle: bool = True
    sinks: tuple[str, ...] = ("stdout",)
    source: SourceConfig = field(default_factory=SourceConfig)
    instruction: InstructionConfig = field(default_factory=InstructionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    origin: str = "built-in defaults"  # where this config came from (for the log)


SECTIONS: dict[str, type] = {
    "source": SourceConfig,
    "instruction": InstructionConfig,
    "schedule": ScheduleConfig,
    "safety": SafetyConfig,
    "monitor": MonitorConfig,
}


def config_error(key: str, value: object, allowed: str) -> MobileVLAError:
    return MobileVLAError(f"config key `{key}` has value {value!r}; allowed: {allowed}")


def _number(key: str, value: object, low: float | None = None, high: float | None = None,
            integer: bool = False, exclusive_low: bool = False) -> float:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise config_error(key, value, _range_text(kind, low, high, exclusive_low))
    number = float(value)
    if range_problem(number, low, high, low_open=exclusive_low) is not None:
        raise config_error(key, value, _range_text(kind, low, high, exclusive_low))
    return number


def _range_text(kind: str, low: float | None, high: float | None, exclusive_low: bool) -> str:
    parts = [kind if kind == "an integer" else "a finite number"]
    if low is not None:
        parts.append(f"{'>' if exclusive_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " ".join(parts)


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise config_error(key, value, " | ".join(allowed))
    return str(value)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise config_error(key, value, "true or false")
    return value


def _text(key: str, value: object, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise config_error(key, value, "a non-empty string" + (" or null" if optional else ""))
    return value


def _axes(key: str, value: object, high: float) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise config_error(key, value, f"a mapping of axis to a positive number, axes {' | '.join(AXES)}")
    limits = {}
    for axis, limit in value.items():
        _choice(f"{key}.{axis}", axis, AXES)
        limits[str(axis)] = _number(f"{key}.{axis}", limit, 0.0, high, exclusive_low=True)
    return limits


def _sensor_mode(key: str, value: object) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise config_error(key, value, "[width, height] in pixels, e.g. [1280, 720]")
    width, height = (int(_number(key, v, 1, 10000, integer=True)) for v in value)
    return width, height


def _sinks(key: str, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise config_error(key, value, "a list of sink specs: stdout | udp:HOST:PORT | serial:DEVICE[:BAUD] | "
                                       "ros2[:TOPIC]")
    return tuple(items)


def _check_keys(section: str, data: dict[str, Any], cls: type) -> None:
    allowed = [f.name for f in fields(cls) if f.name != "origin"]
    for key in data:
        if key not in allowed:
            where = f" in {section}" if section else ""
            prefix = f"{section}." if section else ""
            raise MobileVLAError(f"unknown config key `{prefix}{key}`; allowed keys{where}: {', '.join(allowed)}")


def parse_source(data: dict[str, Any]) -> SourceConfig:
    c = SourceConfig()
    k = "source."
    config = SourceConfig(
        spec=_text(k + "spec", data.get("spec", c.spec)) or c.spec,
        h5_color=_choice(k + "h5_color", data.get("h5_color", c.h5_color), ("bgr", "rgb")),
        sensor_mode=_sensor_mode(k + "sensor_mode", data.get("sensor_mode", list(c.sensor_mode))),
        fps=int(_number(k + "fps", data.get("fps", c.fps), 1, 240, integer=True)),
        flip_method=int(_number(k + "flip_method", data.get("flip_method", c.flip_method), 0, 7, integer=True)),
        stall_timeout_s=_number(k + "stall_timeout_s", data.get("stall_timeout_s", c.stall_timeout_s), 0.0,
                                MAX_TIMEOUT_S, exclusive_low=True),
        first_frame_timeout_s=_number(k + "first_frame_timeout_s",
                                      data.get("first_frame_timeout_s", c.first_frame_timeout_s), 0.0,
                                      MAX_TIMEOUT_S, exclusive_low=True),
        reconnect_attempts=int(_number(k + "reconnect_attempts", data.get("reconnect_attempts",
                                                                          c.reconnect_attempts), 0, 10_000,
                                       integer=True)),
        backoff_s=_number(k + "backoff_s", data.get("backoff_s", c.backoff_s), 0.0, MAX_TIMEOUT_S),
        backoff_max_s=_number(k + "backoff_max_s", data.get("backoff_max_s", c.backoff_max_s), 0.0,
                              MAX_BACKOFF_S),
        file_sync=_bool(k + "file_sync", data.get("file_sync", c.file_sync)),
        file_loop=_bool(k + "file_loop", data.get("file_loop", c.file_loop)),
    )
    if config.backoff_max_s < config.backoff_s:
        raise config_error(k + "backoff_max_s", config.backoff_max_s,
                           f"at least source.backoff_s ({config.backoff_s:g}): the backoff doubles up to it")
    return config


def parse_instruction(data: dict[str, Any]) -> InstructionConfig:
    c = InstructionConfig()
    k = "instruction."
    return InstructionConfig(
        text=_text(k + "text", data.get("text", c.text), optional=True),
        use_bundle_default=_bool(k + "use_bundle_default", data.get("use_bundle_default", c.use_bundle_default)),
        over_long=_choice(k + "over_long", data.get("over_long", c.over_long), OVER_LONG),
        control=_choice(k + "control", data.get("control", c.control), CONTROL_KINDS),
        udp_host=_text(k + "udp_host", data.get("udp_host", c.udp_host)) or c.udp_host,
        udp_port=int(_number(k + "udp_port", data.get("udp_port", c.udp_port), 1, 65535, integer=True)),
        ros2_topic=_text(k + "ros2_topic", data.get("ros2_topic", c.ros2_topic)) or c.ros2_topic,
    )


def parse_schedule(data: dict[str, Any]) -> ScheduleConfig:
    c = ScheduleConfig()
    k = "schedule."
    return ScheduleConfig(
        mode=_choice(k + "mode", data.get("mode", c.mode), SCHEDULE_MODES),
        ensemble_decay=_number(k + "ensemble_decay", data.get("ensemble_decay", c.ensemble_decay), 0.0, 100.0),
        rate_hz=_number(k + "rate_hz", data.get("rate_hz", c.rate_hz), 1.0, 1000.0),
        step_s=_number(k + "step_s", data.get("step_s", c.step_s), 0.0, 10.0, exclusive_low=True),
    )


def parse_safety(data: dict[str, Any]) -> SafetyConfig:
    c = SafetyConfig()
    k = "safety."
    scale, limit = data.get("scale"), data.get("limit")
    return SafetyConfig(
        scale=None if scale is None else _number(k + "scale", scale, 0.0, MAX_OUTPUT_SCALE, exclusive_low=True),
        limit=None if limit is None else _number(k + "limit", limit, 0.0, MAX_VELOCITY, exclusive_low=True),
        max_velocity=_axes(k + "max_velocity", data.get("max_velocity"), MAX_VELOCITY),
        max_accel=_axes(k + "max_accel", data.get("max_accel"), MAX_ACCEL),
        frame_deadline_s=_number(k + "frame_deadline_s", data.get("frame_deadline_s", c.frame_deadline_s), 0.0,
                                 MAX_DEADLINE_S, exclusive_low=True),
        max_latency_s=_number(k + "max_latency_s", data.get("max_latency_s", c.max_latency_s), 0.0,
                              MAX_DEADLINE_S, exclusive_low=True),
    )


def parse_monitor(data: dict[str, Any]) -> MonitorConfig:
    c = MonitorConfig()
    k = "monitor."
    config = MonitorConfig(
        enabled=_bool(k + "enabled", data.get("enabled", c.enabled)),
        interval_s=_number(k + "interval_s", data.get("interval_s", c.interval_s), 0.05, 60.0),
        source=_choice(k + "source", data.get("source", c.source), MONITOR_SOURCES),
        warn_available_mb=_number(k + "warn_available_mb", data.get("warn_available_mb", c.warn_available_mb), 0.0,
                                  MAX_MEMORY_MB),
        guard_available_mb=_number(k + "guard_available_mb", data.get("guard_available_mb",
                                                                      c.guard_available_mb), 0.0, MAX_MEMORY_MB),
        warn_temp_c=_number(k + "warn_temp_c", data.get("warn_temp_c", c.warn_temp_c), 0.0, 150.0),
        warn_swap_mb=_number(k + "warn_swap_mb", data.get("warn_swap_mb", c.warn_swap_mb), 0.0, MAX_MEMORY_MB),
    )
    if config.guard_available_mb > config.warn_available_mb:
        raise config_error(k + "guard_available_mb", config.guard_available_mb,
                           f"at most monitor.warn_available_mb ({config.warn_available_mb:g}): the warning comes "
                           f"before the guard stops the robot")
    return config


PARSERS = {"source": parse_source, "instruction": parse_instruction, "schedule": parse_schedule,
           "safety": parse_safety, "monitor": parse_monitor}


def parse_config(data: object, origin: str) -> RuntimeConfig:
    """Validate a loaded YAML document into a RuntimeConfig (missing keys take their defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MobileVLAError(f"{origin}: the config must be a YAML mapping of settings, got {type(data).__name__}")
    _check_keys("", data, RuntimeConfig)
    sections = {}
    for name, parser in PARSERS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            keys = ", ".join(f.name for f in fields(SECTIONS[name]))
            raise config_error(name, section, f"a mapping with keys {keys}")
        _check_keys(name, section, SECTIONS[name])
        sections[name] = parser(section)
    bundle = _text("bundle", data.get("bundle"), optional=True)
    defaults = RuntimeConfig()
    return RuntimeConfig(
        bundle=None if bundle is None else Path(bundle).expanduser(),
        backend=_choice("backend", data.get("backend", defaults.backend), BACKENDS),
        precision=_choice("precision", data.get("precision", defaults.precision), RUNTIME_PRECISIONS),
        threads=int(_number("threads", data.get("threads", defaults.threads), 0, 256, integer=True)),
        verify_bundle=_bool("verify_bundle", data.get("verify_bundle", defaults.verify_bundle)),
        sinks=_sinks("sinks", data.get("sinks", list(defaults.sinks))),
        origin=origin,
        **sections,  # type: ignore[arg-type]
    )


def with_section(config: RuntimeConfig, section: str, **changes: Any) -> RuntimeConfig:
    """A copy of `config` with keys of one section replaced (the CLI's flag overrides); None values are ignored."""
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return config
    return replace(config, **{section: replace(getattr(config, section), **changes)})
