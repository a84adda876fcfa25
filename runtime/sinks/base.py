"""What a sink is given (`VelocityCommand`) and what it promises (`Sink`).

Every command with `stop` true is an all-zero velocity: the robot must halt. Receivers should also halt on their
own when commands stop arriving (a deadman timeout); the runtime cannot send anything once it is dead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    pass

AXES = ("linear_x", "linear_y", "angular_z")
RECOVERED_REASON = "sink recovered"
SHUTDOWN_REASON = "shutdown"


class SinkError(Exception):
    """A sink could not deliver a command (the worker counts it and reconnects); not a user error."""


@dataclass(frozen=True)
class VelocityCommand:
    seq: int
    stamp: float  # time.time() when produced
    linear_x: float = 0.0
    linear_y: float = 0.0
    angular_z: float = 0.0
    stop: bool = False  # a zero command from the safety layer (deadman)
    reason: str = ""  # why stopped: "stale frame", "overrun", "no instruction", "sink recovered", "shutdown", ...
    latency_ms: float | None = None  # capture-to-command, when known

    def as_stop(self, reason: str) -> VelocityCommand:
        """This command's zero twin: same seq, stamped now, all velocities 0, stop set."""
        return VelocityCommand(self.seq, time.time(), stop=True, reason=reason)


class Sink(Protocol):
    name: str

    def send(self, command: VelocityCommand) -> None: ...  # may raise OSError/SinkError; worker thread only

    def close(self) -> None: ...

    def reopen(self) -> None: ...  # reconnect after failure (serial port re-opened, socket re-created)
