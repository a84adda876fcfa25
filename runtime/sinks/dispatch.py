"""`open_sink`: a sink from its spec.

Specs (`open_sink`):
  - `stdout` or `-`                JSON lines on standard output
  - `udp:HOST:PORT`                one JSON datagram per command; HOST may be a name, IPv4 or `[IPv6]`
  - `serial:DEVICE[:BAUD]`         one checksummed ASCII line per command (pyserial), BAUD default 115200
  - `ros2[:TOPIC]`                 geometry_msgs/Twist on TOPIC (default cmd_vel) through rclpy
  - `dds[:TOPIC][?stamped&...]`    geometry_msgs/Twist or TwistStamped through Cyclone DDS (no ROS install)
ROS topics resolve with the node's namespace and remaps (`names`: config section `ros2`, `--ros-args`).
"""

from __future__ import annotations

from runtime.errors import MobileVLAError
from runtime.ros.names import RosNames
from runtime.sinks.base import Sink
from runtime.sinks.dds import DdsSink, parse_dds
from runtime.sinks.ros2 import DEFAULT_ROS_TOPIC, Ros2Sink
from runtime.sinks.serial import SerialSink, parse_serial
from runtime.sinks.stdout import StdoutSink
from runtime.sinks.udp import UdpSink, parse_udp

SINK_FORMS = "stdout (or -), udp:HOST:PORT, serial:DEVICE[:BAUD], ros2[:TOPIC], dds[:TOPIC][?stamped&frame_id=ID]"


def open_sink(spec: str, names: RosNames | None = None) -> Sink:
    """Open a sink from its spec (SINK_FORMS)."""
    kind, _, rest = spec.partition(":")
    if spec in ("stdout", "-"):
        return StdoutSink()
    if kind == "udp":
        host, port = parse_udp(spec, rest)
        return UdpSink(host, port)
    if kind == "serial":
        device, baud = parse_serial(spec, rest)
        return SerialSink(device, baud)
    if kind == "ros2":
        topic = rest or DEFAULT_ROS_TOPIC
        return Ros2Sink(topic, names or RosNames())
    if kind == "dds":
        return DdsSink(parse_dds(spec, rest), names)
    raise MobileVLAError(f"sink {spec!r}: unknown kind {kind!r}; expected one of: {SINK_FORMS}")
