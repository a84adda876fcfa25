"""The DDS side of ROS 2: the domain (`ROS_DOMAIN_ID`, default 0), ROS 2's topic naming (a ROS topic, resolved
with the node's namespace and remaps by runtime/ros/names.py to `/ns/name`, is the DDS topic `rt/ns/name`), and the
QoS ROS 2 drivers expect. Discovery and interfaces come from Cyclone DDS's own
configuration (`CYCLONEDDS_URI`); the tests pin it to loopback unicast with multicast off."""

from __future__ import annotations

import functools
import os
from typing import Any

from runtime.errors import MobileVLAError
from runtime.ros.names import RosNames


def domain_id(environ: dict[str, str] | None = None) -> int:
    text = (os.environ if environ is None else environ).get("ROS_DOMAIN_ID", "0") or "0"
    if not text.isdigit() or not 0 <= int(text) <= 232:
        raise MobileVLAError(f"ROS_DOMAIN_ID={text!r}: expected an integer 0-232 (ROS 2's range), as the robot's "
                             f"other nodes use")
    return int(text)


@functools.cache
def _participant_for(domain: int) -> Any:
    from cyclonedds.domain import DomainParticipant

    return DomainParticipant(domain)


def participant() -> Any:
    """The process's one participant in `ROS_DOMAIN_ID`, shared by every sink, source and listener (as a ROS 2
    process shares one per context): one discovery, not one per entity."""
    return _participant_for(domain_id())


def dds_topic(names: RosNames, ros_topic: str, what: str) -> tuple[str, str]:
    """(the resolved ROS topic, its DDS topic): `cmd_vel` in namespace /robot1 -> (`/robot1/cmd_vel`,
    `rt/robot1/cmd_vel`), ROS 2's prefix for topics."""
    resolved = names.resolve(ros_topic, what)
    return resolved, "rt" + resolved


def sensor_qos() -> Any:
    """Images: best effort, keep last 1 (ROS 2's sensor-data profile; a best-effort reader also matches a reliable
    camera driver, and only the newest frame matters)."""
    from cyclonedds.core import Policy, Qos

    return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(1), Policy.Durability.Volatile)


def diagnostics_qos() -> Any:
    """/diagnostics: reliable, keep last 10 (what diagnostic_updater publishes with)."""
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10))


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
