"""ROS 2 name resolution (docs/runtime.md, "ROS 2"): a relative topic (`cmd_vel`) lives in the node's namespace
(`/robot1/cmd_vel`), a private one (`~/status`) under the node (`/robot1/mobile_vla_runtime/status`), an absolute one
(`/diagnostics`) where it says; then the first remap rule whose left side resolves to the same name replaces it, as
`--ros-args -r FROM:=TO` does for a ROS node. The same names serve the rclpy and the Cyclone DDS paths."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.errors import MobileVLAError

DEFAULT_NODE_NAME = "mobile_vla_runtime"
TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
TOPIC = re.compile(rf"^(~|~/{TOKEN}(/{TOKEN})*|/?{TOKEN}(/{TOKEN})*)$")
NAMESPACE = re.compile(rf"^/({TOKEN}(/{TOKEN})*)?$")
NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_topic(name: str, what: str) -> str:
    if not TOPIC.match(name) or "__" in name:
        raise MobileVLAError(f"{what}: {name!r} is not a ROS 2 topic name; expected e.g. cmd_vel, /robot1/cmd_vel "
                             f"or ~/status (letters, digits, underscores separated by /, no double underscore)")
    return name


def check_namespace(namespace: str, what: str) -> str:
    if not NAMESPACE.match(namespace) or "__" in namespace:
        raise MobileVLAError(f"{what}: {namespace!r} is not a ROS 2 namespace; expected / or an absolute name such "
                             f"as /robot1")
    return namespace


def check_node_name(name: str, what: str) -> str:
    if not NODE_NAME.match(name) or "__" in name:
        raise MobileVLAError(f"{what}: {name!r} is not a ROS 2 node name; expected letters, digits and underscores, "
                             f"e.g. {DEFAULT_NODE_NAME}")
    return name


@dataclass(frozen=True)
class RosNames:
    """The node's name, namespace and topic remaps (from config section `ros2`, which `--ros-args` sets)."""

    node_name: str = DEFAULT_NODE_NAME
    namespace: str = "/"
    remaps: Mapping[str, str] = field(default_factory=dict)

    def expand(self, name: str, what: str) -> str:
        """`name` as an absolute topic, before remapping."""
        check_topic(name, what)
        node_ns = self.namespace.rstrip("/")
        if name.startswith("~"):
            return f"{node_ns}/{self.node_name}{name[1:]}"
        if name.startswith("/"):
            return name
        return f"{node_ns}/{name}"

    def resolve(self, name: str, what: str) -> str:
        """The absolute topic a ROS node with these settings would use for `name`."""
        expanded = self.expand(name, what)
        for source, target in self.remaps.items():
            if self.expand(source, f"remap {source}:={target}") == expanded:
                return self.expand(target, f"remap {source}:={target}")
        return expanded
