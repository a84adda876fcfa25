"""The runtime's settings: one dataclass per config section, and their validation (the file is read by
runtime/config_file.py: `--config FILE`, else /etc/mobile-vla/runtime.yaml, else built-in defaults).

Every key is validated here, once; an error names the key, the value and what is allowed. Command-line flags
override the file (the CLI applies them on top of the loaded config). Every setting is documented in docs/runtime.md.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from runtime.errors import MobileVLAError
from runtime.prompt import OVER_LONG
from runtime.ros import names as ros_names
from runtime.settings import (
    Axes,
    Checked,
    Choice,
    Number,
    SpecList,
    Text,
    check_keys,
    config_error,
    flag,
    optional_path,
    pixel_size,
    setting,
)
from runtime.sinks.base import AXES
from runtime.sinks.dispatch import SINK_FORMS
from runtime.sources import spec as source_spec

BACKENDS = ("auto", "tensorrt", "onnxruntime")
RUNTIME_PRECISIONS = ("auto", "fp32", "fp16", "int8")
SCHEDULE_MODES = ("chunk0", "ensemble", "async")
CONTROL_KINDS = ("auto", "ros2", "dds", "udp", "none")
MONITOR_SOURCES = ("auto", "jtop", "tegrastats", "proc")
V4L2_FORMATS = ("auto", "raw", "mjpeg", "h264")  # what a v4l2 camera is captured as (runtime/sources/gstreamer/v4l2.py)
# The capture's scale methods (runtime/sources/gstreamer/pipeline.py): GStreamer's videoscale `method` nicks
# (gst-inspect-1.0 videoscale, GStreamer 1.22), and nvvidconv's `interpolation-method` in its enum's order (L4T
# gst-inspect-1.0 nvvidconv: 0 Nearest, 1 Bilinear, 2 5-Tap, 3 10-Tap, 4 Smart, 5 Nicest; its default is Nearest).
VIDEOSCALE_METHODS = ("nearest-neighbour", "bilinear", "4-tap", "lanczos", "bilinear2", "sinc", "hermite", "spline",
                      "catrom", "mitchell")
NVVIDCONV_METHODS = ("nearest", "bilinear", "5-tap", "10-tap", "smart", "nicest")
DIAGNOSTICS = ("auto", "on", "off")  # ros2.diagnostics: auto publishes when the runtime already speaks DDS
# Upper bounds. Every number must be finite: `frame_deadline_s: .inf` would switch the deadman off.
MAX_OUTPUT_SCALE = 10.0  # the team's server used 1.15; a larger gain is a typo, not a tuning
MAX_VELOCITY = 10.0  # m/s or rad/s: far above any small mobile base
MAX_ACCEL = 100.0  # per s²
MAX_DEADLINE_S = 5.0  # a deadman that waits longer than this is no deadman
MAX_TIMEOUT_S = 600.0
MAX_BACKOFF_S = 3600.0
MAX_MEMORY_MB = 1e9  # only "finite": a guard test sets the thresholds above any real memory




@dataclass(frozen=True)
class SourceConfig(Checked):
    """`--source` and the capture's behaviour (runtime/sources/)."""

    SECTION: ClassVar[str] = "source"
    spec: str = setting("synthetic", Text())
    h5_color: str = setting("bgr", Choice(("bgr", "rgb")))
    sensor_mode: tuple[int, int] = setting((1280, 720), pixel_size)  # csi: the Argus sensor mode; test: its size
    fps: int = setting(30, Number(1, 240, integer=True))
    flip_method: int = setting(0, Number(0, 7, integer=True))  # nvvidconv numbering: 0 none, 1 ccw 90, 2 180, ...
    stall_timeout_s: float = setting(1.0, Number(0.0, MAX_TIMEOUT_S, exclusive_low=True))  # then reconnect
    first_frame_timeout_s: float = setting(5.0, Number(0.0, MAX_TIMEOUT_S, exclusive_low=True))
    reconnect_attempts: int = setting(5, Number(0, 10_000, integer=True))  # failed reconnects in a row, then stop
    backoff_s: float = setting(0.5, Number(0.0, MAX_TIMEOUT_S))
    backoff_max_s: float = setting(8.0, Number(0.0, MAX_BACKOFF_S))
    # a live source that ends the stream sooner than this after a reconnect counts as a failed attempt
    healthy_run_s: float = setting(30.0, Number(0.0, MAX_TIMEOUT_S, exclusive_low=True))
    file_sync: bool = setting(True, flag)  # file: play at the file's own rate (like a camera); false: as fast as read
    file_loop: bool = setting(False, flag)
    # v4l2: auto picks from the camera's caps (raw at sensor_mode and fps, else MJPEG, else H.264); else forced
    v4l2_format: str = setting("auto", Choice(V4L2_FORMATS))
    # The capture's scale methods, chosen by measurement (`runtime --score --resize-path pipeline`; the table is in
    # docs/runtime.md, "Train-serve skew of the camera resize"): bilinear2 had the lowest chunk[0] skew against the
    # training resize on the demo episodes (MAE 0.00014, max 0.0016; nearest-neighbour 0.0026, and 0.029 on fine
    # texture). vic: nvvidconv's (its own default, Nearest, aliases); unmeasured (no Jetson here): measure on the robot.
    resize_method: str = setting("bilinear2", Choice(VIDEOSCALE_METHODS))
    vic_resize_method: str = setting("nicest", Choice(NVVIDCONV_METHODS))
    # VIC only: scale to 2·S on the VIC, then videoscale (resize_method) to S on the CPU, when no VIC method alone
    # is within the skew bound (its cost per frame is in the skew report)
    two_stage: bool = setting(False, flag)

    def check(self) -> None:
        if self.backoff_max_s < self.backoff_s:
            raise config_error("source.backoff_max_s", self.backoff_max_s,
                               f"at least source.backoff_s ({self.backoff_s:g}): the backoff doubles up to it")

    @functools.cached_property
    def parsed(self) -> source_spec.SourceSpec:
        """`spec` as a typed spec, parsed once; MobileVLAError naming the accepted forms when it is none of them."""
        return source_spec.parse_source(self.spec)


@dataclass(frozen=True)
class InstructionConfig(Checked):
    SECTION: ClassVar[str] = "instruction"
    # None: the bundle's default instruction (unless use_bundle_default is false)
    text: str | None = setting(None, Text(optional=True))
    use_bundle_default: bool = setting(True, flag)
    over_long: str = setting("reject", Choice(OVER_LONG))
    control: str = setting("auto", Choice(CONTROL_KINDS))  # how instructions change at run time
    udp_host: str = setting("127.0.0.1", Text())
    udp_port: int = setting(5610, Number(1, 65535, integer=True))
    ros2_topic: str = setting("mobile_vla/instruction", Text())  # relative: in ros2.namespace


@dataclass(frozen=True)
class ScheduleConfig(Checked):
    SECTION: ClassVar[str] = "schedule"
    mode: str = setting("chunk0", Choice(SCHEDULE_MODES))
    # ensemble: ACT's k, weight exp(-k * i) with i = 0 the oldest prediction for this step (runtime/schedule.py)
    ensemble_decay: float = setting(0.01, Number(0.0, 100.0))
    rate_hz: float = setting(30.0, Number(1.0, 1000.0))  # async: the control loop's publish rate
    # async: time between consecutive chunk elements (the training data's control period)
    step_s: float = setting(0.1, Number(0.0, 10.0, exclusive_low=True))


@dataclass(frozen=True)
class SafetyConfig(Checked):
    SECTION: ClassVar[str] = "safety"
    # None: the bundle's output_scale / output_limit (a symmetric clip on every axis)
    scale: float | None = setting(None, Number(0.0, MAX_OUTPUT_SCALE, exclusive_low=True, optional=True))
    limit: float | None = setting(None, Number(0.0, MAX_VELOCITY, exclusive_low=True, optional=True))
    max_velocity: dict[str, float] = setting({}, Axes(AXES, MAX_VELOCITY))  # per-axis |v| limit
    max_accel: dict[str, float] = setting({}, Axes(AXES, MAX_ACCEL))  # per-axis |dv/dt| limit (units/s²)
    # newest frame older than this: zero
    frame_deadline_s: float = setting(0.25, Number(0.0, MAX_DEADLINE_S, exclusive_low=True))
    # capture-to-command latency above this (inference overran): zero
    max_latency_s: float = setting(0.5, Number(0.0, MAX_DEADLINE_S, exclusive_low=True))


@dataclass(frozen=True)
class MonitorConfig(Checked):
    """The health monitor (runtime/health/): sampling, warnings, and the memory guard."""

    SECTION: ClassVar[str] = "monitor"
    enabled: bool = setting(True, flag)
    interval_s: float = setting(1.0, Number(0.01, 60.0))
    source: str = setting("auto", Choice(MONITOR_SOURCES))
    warn_available_mb: float = setting(1024.0, Number(0.0, MAX_MEMORY_MB))  # warn when MemAvailable below this
    guard_available_mb: float = setting(384.0, Number(0.0, MAX_MEMORY_MB))  # stop the runtime safely below this
    warn_temp_c: float = setting(85.0, Number(0.0, 150.0))
    warn_swap_mb: float = setting(256.0, Number(0.0, MAX_MEMORY_MB))

    def check(self) -> None:
        if self.guard_available_mb > self.warn_available_mb:
            raise config_error("monitor.guard_available_mb", self.guard_available_mb,
                               f"at most monitor.warn_available_mb ({self.warn_available_mb:g}): the warning comes "
                               f"before the guard stops the robot")


def ros_namespace(key: str, value: Any) -> str:
    return ros_names.check_namespace(str(Text()(key, value)), f"config key `{key}`")


def ros_node_name(key: str, value: Any) -> str:
    return ros_names.check_node_name(str(Text()(key, value)), f"config key `{key}`")


def ros_remaps(key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise config_error(key, value, "a mapping of topic to topic, e.g. {cmd_vel: /robot1/cmd_vel}")
    return {ros_names.check_topic(k, f"config key `{key}`"): ros_names.check_topic(v, f"config key `{key}.{k}`")
            for k, v in value.items()}


def on_off_auto(key: str, value: Any) -> str:
    """auto | on | off; YAML (and ROS parameters) read a bare on/off as true/false, so those mean on/off too."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return Choice(DIAGNOSTICS)(key, value)


@dataclass(frozen=True)
class Ros2Config(Checked):
    """The ROS 2 node the runtime is (rclpy and Cyclone DDS alike): `--ros-args -r __ns:=/robot1` and `-r FROM:=TO`
    set these (runtime/ros/)."""

    SECTION: ClassVar[str] = "ros2"
    node_name: str = setting(ros_names.DEFAULT_NODE_NAME, ros_node_name)
    namespace: str = setting("/", ros_namespace)  # relative topics (the defaults) live in it
    remaps: dict[str, str] = setting({}, ros_remaps)
    # diagnostic_msgs/DiagnosticArray on /diagnostics at 1 Hz through Cyclone DDS; auto: when a dds sink, a dds:
    # source or instruction.control: dds already uses DDS
    diagnostics: str = setting("auto", on_off_auto)

    @property
    def names(self) -> ros_names.RosNames:
        return ros_names.RosNames(self.node_name, self.namespace, self.remaps)


@dataclass(frozen=True)
class RuntimeConfig(Checked):
    bundle: Path | None = setting(None, optional_path)  # None: $MOBILE_VLA_BUNDLE or ~/.cache/mobile-vla/bundle
    backend: str = setting("auto", Choice(BACKENDS))
    precision: str = setting("auto", Choice(RUNTIME_PRECISIONS))
    threads: int = setting(0, Number(0, 256, integer=True))
    verify_bundle: bool = setting(True, flag)
    sinks: tuple[str, ...] = setting(("stdout",), SpecList(SINK_FORMS))
    source: SourceConfig = field(default_factory=SourceConfig)
    instruction: InstructionConfig = field(default_factory=InstructionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    ros2: Ros2Config = field(default_factory=Ros2Config)
    origin: str = "built-in defaults"  # where this config came from (for the log)


SECTIONS: dict[str, type[Checked]] = {
    "source": SourceConfig,
    "instruction": InstructionConfig,
    "schedule": ScheduleConfig,
    "safety": SafetyConfig,
    "monitor": MonitorConfig,
    "ros2": Ros2Config,
}


def parse_section(name: str, data: object) -> Checked:
    """One section of a loaded YAML document; missing keys take their defaults, present ones meet their rules."""
    cls = SECTIONS[name]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        keys = ", ".join(f.name for f in fields(cls))  # type: ignore[arg-type]
        raise config_error(name, data, f"a mapping with keys {keys}")
    check_keys(name, data, cls)
    return cls(**data)


def parse_config(data: object, origin: str) -> RuntimeConfig:
    """Validate a loaded YAML document into a RuntimeConfig (missing keys take their defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MobileVLAError(f"{origin}: the config must be a YAML mapping of settings, got {type(data).__name__}")
    check_keys("", data, RuntimeConfig, hidden=("origin",))
    top = {key: value for key, value in data.items() if key not in SECTIONS}
    sections = {name: parse_section(name, data.get(name)) for name in SECTIONS}
    return RuntimeConfig(**top, **sections, origin=origin)  # type: ignore[arg-type]


def config_as_dict(config: RuntimeConfig) -> dict[str, object]:
    """The YAML form of `config` (`runtime --print-config`): what `parse_config` reads back to the same config."""
    data = asdict(config)
    data["bundle"] = None if config.bundle is None else str(config.bundle)
    data["sinks"] = list(config.sinks)
    data["source"]["sensor_mode"] = list(config.source.sensor_mode)
    data.pop("origin")
    return data


def with_overrides(config: RuntimeConfig, overrides: dict[str, Any], origin: str) -> RuntimeConfig:
    """`config` with the keys of `overrides` (a config file's shape, e.g. from `--ros-args -p`) on top, checked as a
    file is."""
    return parse_config(merged(config_as_dict(config), overrides), f"{config.origin} + {origin}")


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` on top, mappings merged key by key (a section, `ros2.remaps`, `safety.max_velocity`)."""
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def with_section(config: RuntimeConfig, section: str, **changes: Any) -> RuntimeConfig:
    """A copy of `config` with keys of one section replaced (the CLI's flag overrides); None values are ignored."""
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return config
    return replace(config, **{section: replace(getattr(config, section), **changes)})
