"""`/diagnostics` at 1 Hz through Cyclone DDS: one diagnostic_msgs/DiagnosticStatus named `NODE: policy` (the report
of runtime/diagnostics.py) in a DiagnosticArray, as diagnostic_updater publishes it, so `rqt_robot_monitor`,
`ros2 topic echo /diagnostics` and diagnostic_aggregator see the runtime. Published from its own thread, so a
stalled camera or a hung backend still shows up (as ERROR) instead of going silent."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime.config import RuntimeConfig
from runtime.diagnostics import LoopStatus, diagnose
from runtime.errors import MobileVLAError
from runtime.health.base import HealthReading

log = logging.getLogger("runtime.diagnostics")
DIAGNOSTICS_TOPIC = "/diagnostics"
PERIOD_S = 1.0


class DdsDiagnostics:
    def __init__(self, status: Callable[[], LoopStatus], reading: Callable[[], HealthReading | None],
                 config: RuntimeConfig, period_s: float = PERIOD_S) -> None:
        try:
            from cyclonedds.pub import DataWriter
            from cyclonedds.topic import Topic

            from runtime.dds import messages
            from runtime.dds.participant import dds_topic, diagnostics_qos, participant
        except ImportError as exc:
            raise MobileVLAError("ros2.diagnostics needs Cyclone DDS's Python binding: pip install '.[dds]'; or "
                                 "set ros2.diagnostics: off") from exc
        names = config.ros2.names
        self.topic, dds_name = dds_topic(names, DIAGNOSTICS_TOPIC, "ros2.diagnostics")
        self.name = f"{names.node_name}: policy"
        self._status, self._reading, self._config, self._period = status, reading, config, period_s
        self._messages = messages
        qos = diagnostics_qos()
        self._participant = participant()
        self._writer: Any = DataWriter(self._participant, Topic(self._participant, dds_name,
                                                                messages.DiagnosticArray, qos=qos), qos=qos)
        self._hardware_id = socket.gethostname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="diagnostics", daemon=True)
        self._frames, self._since = 0, time.monotonic()

    def start(self) -> None:
        self._thread.start()
        log.info("diagnostics: %s on %s every %.1f s", self.name, self.topic, self._period)

    def message(self, now: float) -> Any:
        """The DiagnosticArray for `now` (time.monotonic()); FPS over the time since the previous one."""
        status = self._status()
        fps = (status.frames - self._frames) / max(now - self._since, 1e-9)
        self._frames, self._since = status.frames, now
        report = diagnose(status, fps, self._reading(), self._config, now)
        m = self._messages
        values = [m.KeyValue(key, value) for key, value in report.values]
        entry = m.DiagnosticStatus(report.level, self.name, report.message, self._hardware_id, values)
        return m.DiagnosticArray(m.Header(m.ros_time(time.time()), ""), [entry])

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._writer.write(self.message(time.monotonic()))
            except Exception:  # diagnostics must never stop the robot's loop: log and try again next period
                log.exception("publishing %s failed", self.topic)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._writer = None
