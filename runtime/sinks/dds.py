"""`dds[:TOPIC][?stamped&frame_id=ID]`: geometry_msgs/Twist (or TwistStamped) on a ROS 2 topic (default cmd_vel,
in the node's namespace, remappable: runtime/ros/names.py) through Cyclone DDS, with no ROS install (runtime/dds/).
TwistStamped carries the frame's capture time (the command's stamp less its capture-to-command latency) and
`frame_id` (default base_link)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.errors import MobileVLAError
from runtime.ros.names import RosNames
from runtime.sinks.base import VelocityCommand

DEFAULT_FRAME_ID = "base_link"
DDS_HINT = ("the dds sink needs Cyclone DDS's Python binding: pip install '.[dds]' (the cyclonedds wheel ships its C "
            "library); with a sourced ROS 2, ros2[:TOPIC] uses rclpy instead")


@dataclass(frozen=True)
class DdsSinkSpec:
    topic: str = "cmd_vel"
    stamped: bool = False
    frame_id: str = DEFAULT_FRAME_ID


def parse_dds(spec: str, rest: str) -> DdsSinkSpec:
    topic, _, query = rest.partition("?")
    stamped, frame_id = False, DEFAULT_FRAME_ID
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        if key == "stamped" and not equals:
            stamped = True
        elif key == "frame_id" and value:
            frame_id = value
        else:
            raise MobileVLAError(f"sink {spec!r}: {item!r} is not a setting of the dds sink; expected "
                                 f"dds[:TOPIC][?stamped&frame_id=ID]")
    return DdsSinkSpec(topic or "cmd_vel", stamped, frame_id)


class DdsSink:
    """A DDS writer of Twist/TwistStamped on the ROS 2 topic, reliable, keep last 1."""

    def __init__(self, spec: DdsSinkSpec, names: RosNames | None = None) -> None:
        from runtime.dds.participant import command_qos, dds_topic, participant

        resolved, topic_name = dds_topic(names or RosNames(), spec.topic, f"sink dds:{spec.topic}")
        name = f"dds:{resolved}"
        try:
            from cyclonedds.pub import DataWriter
            from cyclonedds.topic import Topic

            from runtime.dds import messages
        except ImportError as exc:
            raise MobileVLAError(DDS_HINT) from exc
        self.name = name
        self._spec = spec
        self._messages = messages
        self._qos = command_qos()
        self._participant = participant()
        kind = messages.TwistStamped if spec.stamped else messages.Twist
        self._topic = Topic(self._participant, topic_name, kind, qos=self._qos)
        self._writer_type = DataWriter
        self._writer: Any = DataWriter(self._participant, self._topic, qos=self._qos)

    def message(self, command: VelocityCommand) -> Any:
        m = self._messages
        twist = m.Twist(m.Vector3(float(command.linear_x), float(command.linear_y), 0.0),
                        m.Vector3(0.0, 0.0, float(command.angular_z)))
        if not self._spec.stamped:
            return twist
        captured = command.stamp - (command.latency_ms or 0.0) / 1e3
        return m.TwistStamped(m.Header(m.ros_time(captured), self._spec.frame_id), twist)

    def send(self, command: VelocityCommand) -> None:
        self._writer.write(self.message(command))

    def reopen(self) -> None:
        self._writer = self._writer_type(self._participant, self._topic, qos=self._qos)

    def close(self) -> None:
        self._writer = None  # Cyclone DDS deletes entities when their last reference goes
