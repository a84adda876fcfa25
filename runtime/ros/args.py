"""`runtime ... --ros-args [-r FROM:=TO] [-p NAME:=VALUE] [--params-file FILE] [--log-level LEVEL] [--]`, as a ROS 2
node takes them (so `ros2 run` and launch files can start the runtime). Remaps become config section `ros2`
(`__ns` its namespace, `__node` its node name, the rest `ros2.remaps`); a parameter NAME is a config key
(`backend`, `schedule.rate_hz`, `safety.max_latency_s`, ...) and its VALUE is YAML, as ROS parses it; a params file's
`ros__parameters` for `/**` or this node are the same keys, nested. docs/runtime.md, "ROS 2", lists them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import MobileVLAError
from runtime.ros.names import DEFAULT_NODE_NAME

ROS_ARGS, END = "--ros-args", "--"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR, "fatal": logging.CRITICAL}
NO_EFFECT = ("--enable-rosout-logs", "--disable-rosout-logs", "--enable-stdout-logs", "--disable-stdout-logs",
             "--enable-external-lib-logs", "--disable-external-lib-logs")
ROS_FLAGS = (ROS_ARGS, "--remap", "--param", "--params-file", "--log-level", *NO_EFFECT)  # what a node takes
FORMS = "-r FROM:=TO, -p NAME:=VALUE, --params-file FILE, --log-level LEVEL"


@dataclass
class RosArgs:
    remaps: dict[str, str] = field(default_factory=dict)  # node-specific rules (`node:from:=to`) kept with prefix
    namespace: str | None = None
    node_name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # nested, as a config file's sections
    log_level: int | None = None

    def config_overrides(self) -> dict[str, Any]:
        """The config keys these arguments set (a config file's shape, to merge on top of the loaded one)."""
        overrides = dict(self.parameters)
        ros2 = dict(overrides.get("ros2") or {})
        node = self.node_name or ros2.get("node_name")
        remaps = {}
        for rule, target in self.remaps.items():
            prefix, colon, name = rule.rpartition(":")
            if not colon or prefix == node:
                remaps[name] = target
        if self.namespace is not None:
            ros2["namespace"] = self.namespace
        if self.node_name is not None:
            ros2["node_name"] = self.node_name
        if remaps:
            ros2["remaps"] = {**(ros2.get("remaps") or {}), **remaps}
        if ros2:
            overrides["ros2"] = ros2
        return overrides


def split_ros_args(argv: list[str]) -> tuple[list[str], RosArgs | None]:
    """(the runtime's own arguments, the `--ros-args` blocks parsed; None when there are none)."""
    own: list[str] = []
    ros: RosArgs | None = None
    i = 0
    while i < len(argv):
        if argv[i] != ROS_ARGS:
            own.append(argv[i])
            i += 1
            continue
        ros = ros or RosArgs()
        i += 1
        while i < len(argv) and argv[i] not in (END, ROS_ARGS):
            i = _take(argv, i, ros)
        if i < len(argv) and argv[i] == END:
            i += 1
    return own, ros


def _value(argv: list[str], i: int) -> str:
    if i + 1 >= len(argv) or argv[i + 1] in (END, ROS_ARGS):
        raise MobileVLAError(f"--ros-args: {argv[i]} needs a value; expected {FORMS}")
    return argv[i + 1]


def _take(argv: list[str], i: int, ros: RosArgs) -> int:
    """Apply the ROS argument at `argv[i]`; the index after it."""
    arg = argv[i]
    if arg in ("-r", "--remap"):
        _remap(_value(argv, i), ros)
    elif arg in ("-p", "--param"):
        name, value = _assignment(_value(argv, i), arg)
        _set(ros.parameters, name.split("."), yaml.safe_load(value) if value else "", name)
    elif arg == "--params-file":
        _params_file(Path(_value(argv, i)), ros)
    elif arg == "--log-level":
        level = _value(argv, i).rpartition(":=")[2].lower()
        if level not in LOG_LEVELS:
            raise MobileVLAError(f"--ros-args --log-level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
        ros.log_level = LOG_LEVELS[level]
    elif arg in NO_EFFECT:
        logging.getLogger("runtime").debug("--ros-args %s: no effect here (the runtime logs to stderr)", arg)
        return i + 1
    else:
        raise MobileVLAError(f"--ros-args: {arg!r} is not supported here; expected {FORMS} (end the ROS arguments "
                             f"with -- before the runtime's own flags)")
    return i + 2


def _assignment(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise MobileVLAError(f"--ros-args {flag} {text!r}: expected NAME:=VALUE")
    return name, value


def _remap(rule: str, ros: RosArgs) -> None:
    source, target = _assignment(rule, "-r")
    if source == "__ns":
        ros.namespace = target
    elif source in ("__node", "__name"):
        ros.node_name = target
    elif source.startswith("__"):
        raise MobileVLAError(f"--ros-args -r {rule!r}: only __ns, __node and topic remaps are supported")
    else:
        ros.remaps[source] = target


def _set(tree: dict[str, Any], path: list[str], value: Any, name: str) -> None:
    for part in path[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            raise MobileVLAError(f"--ros-args -p {name}: {part} is a setting, not a section")
        tree = child
    tree[path[-1]] = value


def _params_file(path: Path, ros: RosArgs) -> None:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MobileVLAError(f"--ros-args --params-file {path}: {exc.strerror}; give an existing YAML file") from exc
    except yaml.YAMLError as exc:
        raise MobileVLAError(f"--ros-args --params-file {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise MobileVLAError(f"--params-file {path}: expected a mapping NODE: {{ros__parameters: {{...}}}}")
    for node, entry in data.items():
        parameters = entry.get("ros__parameters") if isinstance(entry, dict) else None
        if not isinstance(parameters, dict):
            raise MobileVLAError(f"--params-file {path}: {node!r} has no ros__parameters mapping; expected "
                                 f"NODE: {{ros__parameters: {{KEY: VALUE}}}}")
        name = ros.node_name or DEFAULT_NODE_NAME
        if node in ("/**", name) or str(node).endswith(f"/{name}"):
            _merge(ros.parameters, parameters, str(path))


def _merge(tree: dict[str, Any], update: dict[str, Any], where: str) -> None:
    """`update` (nested or with dotted keys, both as ROS allows) into `tree`."""
    for key, value in update.items():
        if isinstance(value, dict):
            _merge(tree, {f"{key}.{k}": v for k, v in value.items()}, where)
        else:
            _set(tree, str(key).split("."), value, f"{key} ({where})")
