"""`runtime/sinks/dds.py` over a real DDS wire (Cyclone DDS participants in this process, loopback unicast only:
tests/conftest.py). The subscriber declares the ROS 2 types on its own, as a ROS 2 node's generated code does, so
the test checks the names and the CDR layout the commands go out in, not just a round trip of our own classes."""

# No `from __future__ import annotations`: Cyclone DDS reads the field types at class creation.

import struct
import time
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("cyclonedds", reason="the dds sink needs pip install '.[dds]'")

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import float64, int32, uint32
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from runtime.errors import MobileVLAError
from runtime.sinks.base import VelocityCommand
from runtime.sinks.dds import DdsSink, DdsSinkSpec
from runtime.sinks.dispatch import open_sink
from tests.fakes.dds import subscriber


@dataclass
class RosVector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64
    y: float64
    z: float64


@dataclass
class RosTwist(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: RosVector3
    angular: RosVector3


@dataclass
class RosTime(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
class RosHeader(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: RosTime
    frame_id: str


@dataclass
class RosTwistStamped(IdlStruct, typename="geometry_msgs::msg::dds_::TwistStamped_"):
    header: RosHeader
    twist: RosTwist


def receive(reader: Any, sink: Any, command: VelocityCommand, timeout_s: float = 5.0) -> list[Any]:
    """Send until the reader has matched and got it (discovery over loopback takes a moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sink.send(command)
        time.sleep(0.05)
        samples = reader.take(N=10)
        if samples:
            return list(samples)
    raise AssertionError(f"no sample on the subscriber within {timeout_s} s")


def test_twist_reaches_a_ros2_typed_subscriber() -> None:
    reader = subscriber("rt/robot1/cmd_vel", RosTwist)
    sink = open_sink("dds:/robot1/cmd_vel")
    try:
        samples = receive(reader, sink, VelocityCommand(7, time.time(), 0.25, -0.1, 0.5))
    finally:
        sink.close()
    assert sink.name == "dds:/robot1/cmd_vel"
    twist = samples[-1]
    assert (twist.linear.x, twist.linear.y, twist.linear.z) == (0.25, -0.1, 0.0)
    assert (twist.angular.x, twist.angular.y, twist.angular.z) == (0.0, 0.0, 0.5)


def test_the_wire_format_is_ros2_cdr() -> None:
    """XCDR1 little endian (encapsulation 00 01 00 00), then six float64: linear x y z, angular x y z."""
    sink = DdsSink(DdsSinkSpec("/cmd_vel"))
    try:
        data = sink.message(VelocityCommand(1, 0.0, 0.25, -0.1, 0.5)).serialize()
    finally:
        sink.close()
    assert data == bytes([0, 1, 0, 0]) + struct.pack("<6d", 0.25, -0.1, 0.0, 0.0, 0.0, 0.5)


def test_twist_stamped_carries_the_capture_time_and_frame_id() -> None:
    reader = subscriber("rt/cmd_vel_stamped", RosTwistStamped)
    sink = open_sink("dds:/cmd_vel_stamped?stamped&frame_id=base_footprint")
    stamp = 1_767_225_600.75
    try:
        samples = receive(reader, sink, VelocityCommand(3, stamp, 0.3, 0.0, 0.0, latency_ms=250.0))
    finally:
        sink.close()
    message = samples[-1]
    assert message.header.frame_id == "base_footprint"
    assert (message.header.stamp.sec, message.header.stamp.nanosec) == (1_767_225_600, 500_000_000)  # capture time
    assert message.twist.linear.x == 0.3


@pytest.mark.parametrize(("spec", "message"), [
    ("dds:cmd vel", r"'cmd vel' is not a ROS 2 topic name; expected e.g. cmd_vel, /robot1/cmd_vel"),
    ("dds:/cmd_vel?stamp", r"'stamp' is not a setting of the dds sink; expected "
                           r"dds\[:TOPIC\]\[\?stamped&frame_id=ID\]"),
    ("dds:/cmd_vel?frame_id=", r"'frame_id=' is not a setting of the dds sink"),
])
def test_bad_dds_specs_say_what_is_expected(spec: str, message: str) -> None:
    with pytest.raises(MobileVLAError, match=message):
        open_sink(spec)


def test_bad_domain_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", "robot")
    with pytest.raises(MobileVLAError, match=r"ROS_DOMAIN_ID='robot': expected an integer 0-232"):
        open_sink("dds:/cmd_vel")


@dataclass
class RosString(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


def test_instructions_arrive_over_dds_and_get_a_status_reply() -> None:
    from cyclonedds.pub import DataWriter

    from runtime.config import InstructionConfig
    from runtime.control import InstructionBox, open_listener

    box = InstructionBox("start")
    listener = open_listener(InstructionConfig(control="dds", ros2_topic="/robot1/instruction"), box,
                             lambda text: "long" if len(text) > 20 else None)
    assert listener is not None
    listener.start()
    participant = DomainParticipant(42)
    qos = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepLast(10))
    writer = DataWriter(participant, Topic(participant, "rt/robot1/instruction", RosString, qos=qos), qos=qos)
    status = subscriber("rt/robot1/instruction/status", RosString)
    try:
        deadline = time.monotonic() + 5.0
        while box.wanted != "turn left at the box" and time.monotonic() < deadline:
            writer.write(RosString("turn left at the box"))
            time.sleep(0.1)
        assert box.wanted == "turn left at the box"
        replies: list[Any] = []
        while not replies and time.monotonic() < deadline:
            replies = list(status.take(N=10))
            time.sleep(0.05)
    finally:
        listener.close()
    assert replies and '"ok": true' in replies[-1].data and '"warning": "long"' not in replies[-1].data
