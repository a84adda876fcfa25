"""The DDS side of ROS 2: the domain (`ROS_DOMAIN_ID`, default 0), ROS 2's topic naming (a ROS topic `/ns/name` is
the DDS topic `rt/ns/name`), and the QoS ROS 2 drivers expect. Discovery and interfaces come from Cyclone DDS's own
configuration (`CYCLONEDDS_URI`); the tests pin it to loopback unicast with multicast off."""

from __future__ import annotations

import os
import re
from typing import Any

from runtime.errors import MobileVLAError

ROS_TOPIC = re.compile(r"^/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


def domain_id(environ: dict[str, str] | None = None) -> int:
    text = (os.environ if environ is None else environ).get("ROS_DOMAIN_ID", "0") or "0"
    if not text.isdigit() or not 0 <= int(text) <= 232:
        raise MobileVLAError(f"ROS_DOMAIN_ID={text!r}: expected an integer 0-232 (ROS 2's range), as the robot's "
                             f"other nodes use")
    return int(text)


def dds_topic(ros_topic: str, what: str) -> str:
    """`/cmd_vel` -> `rt/cmd_vel` (ROS 2's prefix for topics; relative names are taken from the root namespace)."""
    if not ROS_TOPIC.match(ros_topic):
        raise MobileVLAError(f"{what}: {ros_topic!r} is not a ROS 2 topic name; expected e.g. /cmd_vel or "
                             f"/robot1/cmd_vel (letters, digits, underscores, separated by /)")
    return "rt/" + ros_topic.lstrip("/")


def instruction_qos() -> Any:
    """Instructions: reliable, keep last 10 (what a ROS 2 publisher's default QoS matches)."""
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10))


def command_qos() -> Any:
    """Commands: reliable, keep last 1 (a late command is worth nothing; the newest replaces it)."""
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(1),
               Policy.Durability.Volatile)
