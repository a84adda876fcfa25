"""ROS 2 message types as DDS types, with the names ROS 2's rmw layers give them (`<pkg>::msg::dds_::<Name>_`), so
the CDR on the wire is what a ROS 2 node publishes and expects (plain, final structs; XCDR1 little endian)."""

# No `from __future__ import annotations`: Cyclone DDS reads the field types at class creation.

from dataclasses import dataclass

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import byte, float64, int32, sequence, uint32


@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64
    y: float64
    z: float64


@dataclass
class Twist(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: Vector3
    angular: Vector3


@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time
    frame_id: str


@dataclass
class TwistStamped(IdlStruct, typename="geometry_msgs::msg::dds_::TwistStamped_"):
    header: Header
    twist: Twist


def ros_time(seconds: float) -> Time:
    """builtin_interfaces/Time of a Unix time in seconds."""
    nanoseconds = round(seconds * 1e9)
    return Time(nanoseconds // 1_000_000_000, nanoseconds % 1_000_000_000)


@dataclass
class String(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str
    value: str


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: byte  # OK 0, WARN 1, ERROR 2, STALE 3
    name: str
    message: str
    hardware_id: str
    values: sequence[KeyValue]  # type: ignore[type-arg]  # an IDL annotation, not a typing generic


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header
    status: sequence[DiagnosticStatus]  # type: ignore[type-arg]  # an IDL annotation, not a typing generic
