"""The wire formats of the velocity commands.

Formats:
  - JSON (stdout: one object per line, flushed per line; UDP: the same object UTF-8 encoded, one datagram, no
    newline), compact: `{"seq":42,"stamp":1767225600.123456,"linear":[0.25,-0.1,0.0],"angular":[0.0,0.0,0.0],
    "stop":false,"reason":"","latency_ms":38.2}`. `stamp` is Unix time (s) when the command was produced,
    `linear`/`angular` follow geometry_msgs/Twist (m/s, rad/s), `latency_ms` is capture-to-command or null.
  - Serial: `$VEL,<seq>,<linear_x>,<linear_y>,<angular_z>,<stop 0|1>*<CS>\\r\\n`, velocities `%.4f`, CS the XOR of
    the bytes between `$` and `*` as two upper-case hex digits (NMEA style), e.g. `$VEL,42,0.2500,-0.1000,0.0000,0*70`.
    A write that times out may leave half a line on the wire: receivers resynchronise on `$` and drop lines whose
    checksum does not match.
  - ROS 2: `linear.x`, `linear.y`, `angular.z` set, the other fields 0.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from runtime.sinks.base import SinkError, VelocityCommand


def _num(value: float, digits: int) -> float:
    # `+ 0.0` turns -0.0 into 0.0, so a stopped robot never reads "-0.0".
    return round(float(value), digits) + 0.0


def command_record(command: VelocityCommand) -> dict[str, object]:
    """The JSON object of the stdout and UDP formats (Twist layout: linear [x, y, z], angular [x, y, z])."""
    return {
        "seq": command.seq,
        "stamp": command.stamp,
        "linear": [_num(command.linear_x, 6), _num(command.linear_y, 6), 0.0],
        "angular": [0.0, 0.0, _num(command.angular_z, 6)],
        "stop": command.stop,
        "reason": command.reason,
        "latency_ms": None if command.latency_ms is None else round(float(command.latency_ms), 3),
    }


def encode_json(command: VelocityCommand) -> str:
    # allow_nan=False: a NaN velocity is a bug upstream; failing the send (counted, logged) beats emitting
    # JSON that receivers cannot parse.
    return json.dumps(command_record(command), separators=(",", ":"), allow_nan=False)


def nmea_checksum(body: str) -> str:
    """XOR of the characters between `$` and `*`, as two upper-case hex digits."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def _fixed4(value: float) -> str:
    text = f"{float(value):.4f}"
    return "0.0000" if text == "-0.0000" else text  # tiny negatives round to "-0.0000": a stop reads as 0.0000


def encode_serial(command: VelocityCommand) -> bytes:
    values = (command.linear_x, command.linear_y, command.angular_z)
    if not all(math.isfinite(v) for v in values):
        raise SinkError(f"command {command.seq} has a non-finite velocity {values}; refusing to send it")
    body = ",".join(["VEL", str(command.seq), *(_fixed4(v) for v in values), str(int(command.stop))])
    return f"${body}*{nmea_checksum(body)}\r\n".encode("ascii")
