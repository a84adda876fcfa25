"""`instruction.control: dds`: std_msgs/String instructions on a ROS 2 topic (`instruction.ros2_topic`) through
Cyclone DDS, without a ROS install; each one's status JSON (as the UDP reply) on TOPIC/status. The same validation
as the other listeners (runtime/control.py `receive`)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from runtime.control import STATUS_SUFFIX, InstructionBox, Validator, receive
from runtime.dds.participant import dds_topic, instruction_qos, participant
from runtime.errors import MobileVLAError
from runtime.ros.names import RosNames

log = logging.getLogger("runtime.control")
POLL_S = 0.05  # how often the listener looks for new instructions


class DdsInstructionListener:
    def __init__(self, box: InstructionBox, topic: str, validate: Validator | None = None,
                 names: RosNames | None = None) -> None:
        try:
            from cyclonedds.pub import DataWriter
            from cyclonedds.sub import DataReader
            from cyclonedds.topic import Topic

            from runtime.dds.messages import String
        except ImportError as exc:
            raise MobileVLAError("instruction.control: dds needs Cyclone DDS's Python binding: pip install '.[dds]'; "
                                 "or set instruction.control: udp") from exc
        names = names or RosNames()
        where = "instruction.ros2_topic"
        self.box, self.validate = box, validate
        self.topic, reader_topic = dds_topic(names, topic, where)
        self.status_topic, status_topic = dds_topic(names, self.topic + STATUS_SUFFIX, where)
        qos = instruction_qos()
        self._participant = participant()
        self._reader: Any = DataReader(self._participant, Topic(self._participant, reader_topic, String, qos=qos),
                                       qos=qos)
        self._status: Any = DataWriter(self._participant, Topic(self._participant, status_topic, String, qos=qos),
                                       qos=qos)
        self._string = String
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="instruction-dds", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("instructions: DDS topic %s (std_msgs/String), status on %s", self.topic, self.status_topic)

    def _serve(self) -> None:
        while not self._stop.wait(POLL_S):
            for message in self._reader.take(N=16):
                reply = receive(self.box, self.validate, message.data, f"dds {self.topic}")
                self._status.write(self._string(json.dumps(reply)))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
