"""Instructions at run time: the current instruction, and the listeners that change it while the robot runs.

The loop asks `InstructionBox.take_change()` once per frame; only a change is tokenized (by the pipeline), so a
steady instruction costs nothing per frame. Listeners:
- UDP (default without ROS 2): one datagram per message, either a JSON object `{"instruction": "go to the box"}`
  (`{"instruction": null}` clears it: the robot stops until the next one) or plain UTF-8 text. Each datagram is
  answered with `{"ok": true|false, "instruction": ..., "error": ...}` to the sender.
- ROS 2 (when rclpy imports): `std_msgs/String` on a topic (default `/mobile_vla/instruction`); an empty string
  clears the instruction.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

from runtime.config import InstructionConfig
from runtime.errors import MobileVLAError

log = logging.getLogger("runtime.control")
MAX_DATAGRAM = 4096


class InstructionBox:
    """Thread-safe holder of the wanted instruction; None means "no instruction": the deadman holds the robot."""

    def __init__(self, initial: str | None) -> None:
        self._lock = threading.Lock()
        self._wanted = initial
        self._version = 1
        self._taken = 0

    def offer(self, instruction: str | None, origin: str, level: int = logging.INFO) -> None:
        text = instruction.strip() if instruction else None
        with self._lock:
            self._wanted = text or None
            self._version += 1
        log.log(level, "instruction from %s: %r", origin, text)

    def take_change(self) -> tuple[bool, str | None]:
        """(changed since the last call, the wanted instruction)."""
        with self._lock:
            changed = self._version != self._taken
            self._taken = self._version
            return changed, self._wanted


def parse_message(data: bytes) -> str | None:
    """A control datagram's instruction: JSON `{"instruction": TEXT|null}` or plain text."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise MobileVLAError("control message is not UTF-8 text") from exc
    if not text.startswith("{"):
        return text or None
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MobileVLAError(f"control message is not valid JSON: {exc}") from exc
    if not isinstance(message, dict) or "instruction" not in message:
        raise MobileVLAError('control message JSON needs the key "instruction" (a string, or null to stop)')
    value = message["instruction"]
    if value is not None and not isinstance(value, str):
        raise MobileVLAError(f'"instruction" must be a string or null, got {type(value).__name__}')
    return value or None


class UdpInstructionListener:
    """A thread that receives control datagrams on HOST:PORT and puts their instruction into the box."""

    def __init__(self, box: InstructionBox, host: str, port: int) -> None:
        self.box = box
        self._stop = threading.Event()
        try:
            self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.bind((host, port))
        except OSError as exc:
            raise MobileVLAError(f"cannot listen for instructions on udp {host}:{port} ({exc.strerror}); set "
                                 f"instruction.udp_port to a free port or instruction.control: none") from exc
        self._socket.settimeout(0.2)
        self.address = self._socket.getsockname()
        self._thread = threading.Thread(target=self._serve, name="instruction-udp", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("instructions: listening on udp %s:%d", *self.address[:2])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._socket.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            reply: dict[str, Any]
            try:
                instruction = parse_message(data)
            except MobileVLAError as exc:
                log.warning("control message from %s ignored: %s", sender[0], exc)
                reply = {"ok": False, "error": str(exc)}
            else:
                self.box.offer(instruction, f"udp {sender[0]}:{sender[1]}")
                reply = {"ok": True, "instruction": instruction}
            try:
                self._socket.sendto(json.dumps(reply).encode(), sender)
            except OSError as exc:
                log.debug("control reply to %s failed: %s", sender, exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        self._socket.close()


class Ros2InstructionListener:
    """std_msgs/String on a topic, spun on its own thread (rclpy imported lazily)."""

    def __init__(self, box: InstructionBox, topic: str) -> None:
        rclpy, string_type = import_rclpy_string()
        if not rclpy.ok():
            rclpy.init()
        self._rclpy = rclpy
        self._node = rclpy.create_node("mobile_vla_instruction")
        self._node.create_subscription(string_type, topic, lambda msg: box.offer(msg.data, f"ros2 {topic}"), 10)
        self._executor = rclpy.executors.SingleThreadedExecutor()
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._executor.spin, name="instruction-ros2", daemon=True)
        self.topic = topic

    def start(self) -> None:
        self._thread.start()
        log.info("instructions: subscribed to ROS 2 topic %s (std_msgs/String)", self.topic)

    def close(self) -> None:
        self._executor.shutdown()
        self._node.destroy_node()


def import_rclpy_string() -> tuple[Any, Any]:
    try:
        import rclpy
        import rclpy.executors
        from std_msgs.msg import String
    except ImportError as exc:
        raise MobileVLAError(
            "instruction.control: ros2 needs rclpy and std_msgs: source /opt/ros/<distro>/setup.bash before "
            "starting the runtime, or set instruction.control: udp"
        ) from exc
    return rclpy, String


def ros2_available() -> bool:
    try:
        import_rclpy_string()
    except MobileVLAError:
        return False
    return True


Listener = UdpInstructionListener | Ros2InstructionListener


def open_listener(config: InstructionConfig, box: InstructionBox) -> Listener | None:
    """The listener the config asks for (auto: ROS 2 when rclpy imports, else UDP), not started yet."""
    kind = config.control
    if kind == "auto":
        kind = "ros2" if ros2_available() else "udp"
    if kind == "none":
        return None
    if kind == "ros2":
        return Ros2InstructionListener(box, config.ros2_topic)
    return UdpInstructionListener(box, config.udp_host, config.udp_port)
