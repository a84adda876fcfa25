"""`ros2[:TOPIC]`: geometry_msgs/Twist on TOPIC (default cmd_vel, resolved with the node's namespace and remaps,
runtime/ros/names.py) from the node `ros2.node_name` (default mobile_vla_runtime) in `ros2.namespace`, via rclpy.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import MobileVLAError
from runtime.ros.names import RosNames
from runtime.sinks.base import VelocityCommand

DEFAULT_ROS_TOPIC = "cmd_vel"
ROS_HINT = (
    "ROS 2 sink needs rclpy: source /opt/ros/<distro>/setup.bash (e.g. humble on JetPack 6) in the shell or "
    "service that starts the runtime, or run it in a ROS 2 container; other sinks: udp:HOST:PORT, serial:DEVICE"
)


class Ros2Sink:
    """geometry_msgs/Twist on a topic from the runtime's node, in its own rclpy context."""

    def __init__(self, topic: str = DEFAULT_ROS_TOPIC, names: RosNames | None = None) -> None:
        names = names or RosNames()
        topic = names.resolve(topic, f"sink ros2:{topic}")
        try:
            import rclpy
            import rclpy.context
            from geometry_msgs.msg import Twist
        except ImportError as exc:
            raise MobileVLAError(ROS_HINT) from exc
        self.name = f"ros2:{topic}"
        self._topic = topic
        self._twist = Twist
        # An own context leaves any other rclpy use in the process alone. No rclpy signal handlers: on Ctrl-C they
        # would shut the context down before the runtime's final zero command is published.
        self._context = rclpy.context.Context()
        init_args: dict[str, Any] = {"context": self._context}
        try:
            from rclpy.signals import SignalHandlerOptions  # Humble and later

            init_args["signal_handler_options"] = SignalHandlerOptions.NO
        except ImportError:
            pass
        self._node: Any = None
        try:
            rclpy.init(**init_args)
            self._node = rclpy.create_node(names.node_name, namespace=names.namespace, context=self._context)
            self._publisher = self._node.create_publisher(Twist, topic, 10)
        except Exception as exc:  # InvalidTopicNameException, rmw/DDS errors: the user's topic or ROS setup
            self.close()
            raise MobileVLAError(f"sink ros2:{topic}: cannot publish on {topic!r} ({exc}); give a valid topic "
                                 "(e.g. ros2:/cmd_vel) and check the ROS 2 environment (RMW_IMPLEMENTATION, "
                                 "ROS_DOMAIN_ID)") from exc

    def send(self, command: VelocityCommand) -> None:
        msg = self._twist()
        msg.linear.x = float(command.linear_x)
        msg.linear.y = float(command.linear_y)
        msg.angular.z = float(command.angular_z)
        self._publisher.publish(msg)

    def reopen(self) -> None:
        self._node.destroy_publisher(self._publisher)
        self._publisher = self._node.create_publisher(self._twist, self._topic, 10)

    def close(self) -> None:
        if self._node is not None:
            self._node.destroy_node()
            self._node = None
        if self._context.ok():
            self._context.shutdown()
