"""Instructions at run time: the current instruction, and the listeners that change it while the robot runs.

The loop asks `InstructionBox.take_change()` once per frame; only a change is tokenized (by the pipeline), so a
steady instruction costs nothing per frame. A listener checks each instruction with the pipeline's prompt encoder
*before* offering it (`encoder_validator`): one the loop would refuse (an over-long prompt with
`instruction.over_long: reject`) is answered with the reason and never reaches the box, so the reply and the log
say the same thing and the robot keeps its current instruction. Listeners:
- UDP (default without ROS 2): one datagram per message, either a JSON object `{"instruction": "go to the box"}`
  (`{"instruction": null}` clears it: the robot stops until the next one) or plain UTF-8 text. Each datagram is
  answered to the sender with `{"ok": true, "instruction": TEXT|null}` (plus `"warning": ...` when the prompt was
  truncated, `over_long: truncate`) or `{"ok": false, "error": REASON, "instruction": THE KEPT ONE|null}`.
- ROS 2 (when rclpy imports; or through Cyclone DDS, `instruction.control: dds`): `std_msgs/String` on a topic
  (default `mobile_vla/instruction` in the node's namespace, runtime/ros/names.py); an empty string clears it.
  The same JSON as the UDP reply is published as `std_msgs/String` on `TOPIC/status`.
A rejected instruction logs one warning, `instruction 'TEXT' from ORIGIN rejected, keeping 'CURRENT': REASON`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from runtime.config import InstructionConfig
from runtime.errors import MobileVLAError
from runtime.ros.names import RosNames

if TYPE_CHECKING:
    from runtime.prompt import PromptEncoder

log = logging.getLogger("runtime.control")
MAX_DATAGRAM = 4096
STATUS_SUFFIX = "/status"  # ROS 2: replies go to INSTRUCTION_TOPIC/status
# Raises MobileVLAError (the reason) for an instruction the pipeline would refuse; returns a warning or None.
Validator = Callable[[str], str | None]


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

    @property
    def wanted(self) -> str | None:
        """The instruction the robot follows (or will from the next frame); None: none, the robot holds still."""
        with self._lock:
            return self._wanted

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


def encoder_validator(encoder: PromptEncoder) -> Validator:
    """Check an instruction with the pipeline's own encoder: what it refuses is refused, with its message."""
    def validate(text: str) -> str | None:
        count = len(encoder.prompt_ids(text))  # raises for an empty instruction
        limit = encoder.settings.max_prompt_tokens
        if count > limit and encoder.over_long == "truncate":
            return (f"the instruction's prompt has {count} tokens, the trunk takes {limit}: its last {count - limit} "
                    f"tokens are cut off (instruction.over_long: truncate)")
        encoder.encode(text)  # every other rule of the encoder, e.g. over_long: reject
        return None

    return validate


def receive(box: InstructionBox, validate: Validator | None, instruction: str | None, origin: str) -> dict[str, Any]:
    """Validate, then offer to the box; the reply (UDP) or status (ROS 2) for it, in agreement with the log."""
    text = instruction.strip() if instruction else None
    warning = None
    if text:
        try:
            warning = validate(text) if validate is not None else None
        except MobileVLAError as exc:
            kept = box.wanted
            log.warning("instruction %r from %s rejected, keeping %r: %s", text, origin, kept, exc)
            return {"ok": False, "error": str(exc), "instruction": kept}
    box.offer(text, origin)
    reply: dict[str, Any] = {"ok": True, "instruction": text or None}
    if warning is not None:
        log.warning("instruction %r from %s accepted with a warning: %s", text, origin, warning)
        reply["warning"] = warning
    return reply


class UdpInstructionListener:
    """A thread that receives control datagrams on HOST:PORT and puts their instruction into the box."""

    def __init__(self, box: InstructionBox, host: str, port: int, validate: Validator | None = None) -> None:
        self.box = box
        self.validate = validate
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
                reply = {"ok": False, "error": str(exc), "instruction": self.box.wanted}
            else:
                reply = receive(self.box, self.validate, instruction, f"udp {sender[0]}:{sender[1]}")
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
    """std_msgs/String on a topic, spun on its own thread (rclpy imported lazily); status JSON on TOPIC/status."""

    def __init__(self, box: InstructionBox, topic: str, validate: Validator | None = None,
                 names: RosNames | None = None) -> None:
        rclpy, string_type = import_rclpy_string()
        names = names or RosNames()
        topic = names.resolve(topic, "instruction.ros2_topic")
        if not rclpy.ok():
            rclpy.init()
        self._rclpy = rclpy
        self._node = rclpy.create_node(f"{names.node_name}_instruction", namespace=names.namespace)
        self.status_topic = topic.rstrip("/") + STATUS_SUFFIX
        status = self._node.create_publisher(string_type, self.status_topic, 10)
        callback = ros2_callback(box, validate, topic, lambda text: status.publish(string_type(data=text)))
        self._node.create_subscription(string_type, topic, callback, 10)
        self._executor = rclpy.executors.SingleThreadedExecutor()
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._executor.spin, name="instruction-ros2", daemon=True)
        self.topic = topic

    def start(self) -> None:
        self._thread.start()
        log.info("instructions: subscribed to ROS 2 topic %s (std_msgs/String), status on %s", self.topic,
                 self.status_topic)

    def close(self) -> None:
        self._executor.shutdown()
        self._node.destroy_node()


def ros2_callback(box: InstructionBox, validate: Validator | None, topic: str,
                  publish: Callable[[str], None]) -> Callable[[Any], None]:
    """The subscription callback: a std_msgs/String in, the status JSON (as the UDP reply) out through `publish`."""
    def on_message(message: Any) -> None:
        publish(json.dumps(receive(box, validate, message.data, f"ros2 {topic}")))

    return on_message


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


class Listener(Protocol):
    """An instruction listener (UDP, rclpy, or DDS in runtime/dds/instructions.py): started once, closed once."""

    def start(self) -> None: ...

    def close(self) -> None: ...


def open_listener(config: InstructionConfig, box: InstructionBox, validate: Validator | None = None,
                  names: RosNames | None = None) -> Listener | None:
    """The listener the config asks for (auto: ROS 2 when rclpy imports, else UDP), not started yet; `validate`
    (see `encoder_validator`) refuses what the pipeline would refuse before it reaches the box."""
    kind = config.control
    if kind == "auto":
        kind = "ros2" if ros2_available() else "udp"
    if kind == "none":
        return None
    if kind == "ros2":
        return Ros2InstructionListener(box, config.ros2_topic, validate, names)
    if kind == "dds":
        from runtime.dds.instructions import DdsInstructionListener  # Cyclone DDS only when asked for

        return DdsInstructionListener(box, config.ros2_topic, validate, names)
    return UdpInstructionListener(box, config.udp_host, config.udp_port, validate)
