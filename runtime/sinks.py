"""Velocity command sinks: where the runtime's commands go (stdout, UDP, serial, ROS 2), and the fan-out to them.

Specs (`open_sink`):
  - `stdout` or `-`                JSON lines on standard output
  - `udp:HOST:PORT`                one JSON datagram per command; HOST may be a name, IPv4 or `[IPv6]`
  - `serial:DEVICE[:BAUD]`         one checksummed ASCII line per command (pyserial), BAUD default 115200
  - `ros2[:TOPIC]`                 geometry_msgs/Twist on TOPIC (default /cmd_vel), node `mobile_vla_runtime`

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

Every command with `stop` true is an all-zero velocity: the robot must halt. Receivers should also halt on their
own when commands stop arriving (a deadman timeout); the runtime cannot send anything once it is dead.

`SinkSet` runs one worker thread per sink with a latest-value mailbox: `publish` only swaps a reference, so a slow
or broken sink never delays inference. A newer command replaces one not yet sent ("dropped"). A failed send is
counted and logged (rate-limited); the worker re-opens the sink with backoff (0.5 s doubling to 5 s) and, as soon
as that works, sends a zero (`stop` true, reason "sink recovered", the seq of the newest command that was not
delivered) before anything else; once the zero is out, `on_recovered(name)` (called on that sink's worker thread)
lets the safety layer ramp up again.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from runtime.errors import MobileVLAError

if TYPE_CHECKING:
    import serial

log = logging.getLogger("runtime.sinks")

AXES = ("linear_x", "linear_y", "angular_z")
DEFAULT_BAUD = 115200
DEFAULT_ROS_TOPIC = "/cmd_vel"
ROS_NODE_NAME = "mobile_vla_runtime"
SINK_FORMS = "stdout (or -), udp:HOST:PORT, serial:DEVICE[:BAUD], ros2[:TOPIC]"
SERIAL_WRITE_TIMEOUT_S = 0.2  # bounds a send on a port nobody reads (USB CDC with a hung MCU); ~4 ms per line at 115200
RECOVERED_REASON = "sink recovered"
SHUTDOWN_REASON = "shutdown"
MAX_BAUD = 12_000_000


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


# ---------------------------------------------------------------------------------------------------------- formats


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


# ------------------------------------------------------------------------------------------------------------ sinks


class StdoutSink:
    """JSON lines on stdout (or another text stream), flushed per line so a pipe reader sees each command at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.name = "stdout"
        self._stream = stream if stream is not None else sys.stdout

    def send(self, command: VelocityCommand) -> None:
        self._stream.write(encode_json(command) + "\n")
        self._stream.flush()

    def reopen(self) -> None:
        pass  # nothing to re-open: a closed stdout stays closed, and its sends keep being counted as failures

    def close(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass  # already closed or broken: nothing left to deliver


class UdpSink:
    """One JSON datagram per command on a non-blocking socket (a full socket buffer fails the send, never waits)."""

    def __init__(self, host: str, port: int) -> None:
        self.name = f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"
        self._host = host
        self._port = port
        try:
            self._sock, self._address = self._connect()
        except OSError as exc:
            raise MobileVLAError(
                f"sink {self.name}: cannot resolve or open {host!r} port {port} ({exc}); check the host name "
                "and the network, or give an IP address"
            ) from exc

    def _connect(self) -> tuple[socket.socket, Any]:
        # Resolved again on every re-open: a receiver that got a new DHCP address is found again.
        family, kind, proto, _, address = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        if family == socket.AF_INET:
            # Lets `udp:192.168.1.255:PORT` reach a base controller by broadcast; harmless for unicast.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        return sock, address

    def send(self, command: VelocityCommand) -> None:
        self._sock.sendto(encode_json(command).encode("utf-8"), self._address)

    def reopen(self) -> None:
        self._sock.close()
        self._sock, self._address = self._connect()

    def close(self) -> None:
        self._sock.close()


class SerialSink:
    """Checksummed `$VEL` lines over a serial port (pyserial), with a write timeout so a stuck port fails fast."""

    def __init__(self, device: str, baud: int = DEFAULT_BAUD, write_timeout_s: float = SERIAL_WRITE_TIMEOUT_S) -> None:
        try:
            import serial
        except ImportError as exc:
            raise MobileVLAError(
                f"sink serial:{device} needs pyserial: `pip install pyserial` (or apt install python3-serial)"
            ) from exc
        self.name = f"serial:{device}"
        self._serial_module = serial
        self._device = device
        self._baud = baud
        self._write_timeout_s = write_timeout_s
        try:
            self._port = self._open()
        except (OSError, ValueError) as exc:
            raise MobileVLAError(serial_open_hint(device, exc)) from exc

    def _open(self) -> serial.Serial:
        # timeout=0: never read; write_timeout: a port whose receiver stopped reading raises instead of blocking.
        return self._serial_module.Serial(self._device, self._baud, timeout=0, write_timeout=self._write_timeout_s)

    def send(self, command: VelocityCommand) -> None:
        # No flush(): it is tcdrain(), which waits without a timeout for the bytes to leave the port.
        self._port.write(encode_serial(command))

    def reopen(self) -> None:
        self._close_port()
        self._port = self._open()  # by-id symlinks make a re-plugged adapter come back under the same name

    def _close_port(self) -> None:
        try:
            self._port.close()
        except OSError:
            pass  # the device is gone: the descriptor is closed anyway

    def close(self) -> None:
        self._close_port()


def serial_open_hint(device: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot open serial port {device}: permission denied; add the user to the dialout group "
                "(`sudo usermod -aG dialout $USER`, then log in again) or run the service as a user in it")
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return (f"serial port {device} is not present; check the cable and the name "
                "(`ls /dev/ttyUSB* /dev/ttyACM* /dev/ttyTHS* /dev/serial/by-id/`)")
    if code == errno.EBUSY:
        return f"serial port {device} is busy: another process holds it (`fuser {device}`)"
    return f"cannot open serial port {device}: {exc}"


ROS_HINT = (
    "ROS 2 sink needs rclpy: source /opt/ros/<distro>/setup.bash (e.g. humble on JetPack 6) in the shell or "
    "service that starts the runtime, or run it in a ROS 2 container; other sinks: udp:HOST:PORT, serial:DEVICE"
)


class Ros2Sink:
    """geometry_msgs/Twist on a topic from node `mobile_vla_runtime`, in its own rclpy context."""

    def __init__(self, topic: str = DEFAULT_ROS_TOPIC) -> None:
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
            self._node = rclpy.create_node(ROS_NODE_NAME, context=self._context)
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


# ------------------------------------------------------------------------------------------------------------ specs


def open_sink(spec: str) -> Sink:
    """Open a sink from its spec: stdout (or -), udp:HOST:PORT, serial:DEVICE[:BAUD], ros2[:TOPIC]."""
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
        return Ros2Sink(topic)
    raise MobileVLAError(f"sink {spec!r}: unknown kind {kind!r}; expected one of: {SINK_FORMS}")


def parse_udp(spec: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):  # [IPv6]:PORT
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise MobileVLAError(f"sink {spec!r}: unclosed IPv6 bracket; expected udp:[ADDRESS]:PORT")
        port_text = port_text[1:]
    elif ":" not in rest:
        port_text = ""
        host = rest
    else:
        host, _, port_text = rest.rpartition(":")
        if ":" in host:
            raise MobileVLAError(f"sink {spec!r}: an IPv6 address needs brackets: udp:[{host}]:{port_text}")
    if not port_text:
        raise MobileVLAError(f"sink {spec!r}: udp needs a host and a port: udp:HOST:PORT (IPv6: udp:[::1]:PORT)")
    if not host:
        raise MobileVLAError(f"sink {spec!r}: empty host; expected udp:HOST:PORT")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise MobileVLAError(f"sink {spec!r}: port {port_text!r} is not a number in 1-65535; expected udp:HOST:PORT")
    return host, int(port_text)


def parse_serial(spec: str, rest: str) -> tuple[str, int]:
    if not rest:
        raise MobileVLAError(f"sink {spec!r}: serial needs a device: serial:DEVICE[:BAUD], e.g. serial:/dev/ttyUSB0 "
                             f"(baud default {DEFAULT_BAUD})")
    device, colon, tail = rest.rpartition(":")
    # Device names may hold colons (/dev/serial/by-path/...-usb-0:1.2:1.0-port0): only a plain word after the last
    # colon is read as a baud rate.
    if not colon or not device or any(c in tail for c in "/.-"):
        return rest, DEFAULT_BAUD
    if not tail.isdigit() or not 0 < int(tail) <= MAX_BAUD:
        raise MobileVLAError(f"sink {spec!r}: baud rate {tail!r} is not a positive integer (e.g. 115200); "
                             "expected serial:DEVICE[:BAUD]")
    return device, int(tail)


# ---------------------------------------------------------------------------------------------------------- fan-out


@dataclass
class SinkStats:
    sent: int = 0
    failed: int = 0  # failed sends
    dropped: int = 0  # commands replaced by a newer one before they were sent (or never sent before close)
    reconnects: int = 0  # successful re-opens
    reopen_failed: int = 0
    last_error: str = ""
    healthy: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


LOG_EVERY_S = 5.0  # a failing sink logs its first failure, then at most one summary per this many seconds


@dataclass
class _Lane:
    """One sink, its mailbox and its counters. `lock` guards every field the worker and the publisher share."""

    sink: Sink
    lock: threading.Lock = field(default_factory=threading.Lock)
    work: threading.Condition = field(init=False)  # signalled when a command arrives or the set closes
    done: threading.Condition = field(init=False)  # signalled when the final command was sent
    pending: VelocityCommand | None = None
    final: VelocityCommand | None = None  # publish_final's command, and whether it went out
    final_sent: bool = False
    stats: SinkStats = field(default_factory=SinkStats)
    closing: bool = False
    urgent: bool = False  # publish_final: retry a broken sink now instead of after its backoff
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.work = threading.Condition(self.lock)
        self.done = threading.Condition(self.lock)

    def offer(self, command: VelocityCommand) -> None:
        """Put a command in the mailbox (caller holds the lock); an unsent older one is replaced and counted."""
        if self.pending is not None:
            self.stats.dropped += 1
        self.pending = command
        self.work.notify()


class SinkSet:
    """Fan-out to sinks; one worker thread per sink, so `publish` never blocks on I/O."""

    def __init__(self, sinks: list[Sink], on_recovered: Callable[[str], None] | None = None, *,
                 backoff_s: tuple[float, float] = (0.5, 5.0)) -> None:
        names = [s.name for s in sinks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise MobileVLAError(f"sink {twice[0]} is configured twice; give each sink once")
        self._lanes = [_Lane(s) for s in sinks]
        # Public and read at call time, so it can be set after construction (the loop that owns it needs the set).
        # Called on the recovered sink's worker thread.
        self.on_recovered = on_recovered
        self._backoff_s = backoff_s
        self._started = False
        self._last: VelocityCommand | None = None  # the newest command published
        self._final_published = False

    @property
    def names(self) -> list[str]:
        return [lane.sink.name for lane in self._lanes]

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            worker = _Worker(lane, self._backoff_s, self._notify_recovered)
            lane.thread = threading.Thread(target=worker.run, name=f"sink {lane.sink.name}", daemon=True)
            lane.thread.start()

    def publish(self, command: VelocityCommand) -> None:
        """Hand the command to every sink's mailbox: a reference swap under a lock no send ever holds.

        After `publish_final` nothing replaces the final command: it stays the last word to the robot.
        """
        if self._final_published:
            return
        self._last = command
        for lane in self._lanes:
            with lane.lock:
                lane.offer(command)

    def publish_final(self, command: VelocityCommand, timeout_s: float = 0.5) -> bool:
        """Publish (e.g. the zero before exit) and wait until every sink sent it; False when one did not in time.

        Later `publish` calls are ignored, so a thread that publishes late cannot replace it.
        """
        self._final_published, self._last = True, command
        for lane in self._lanes:
            with lane.lock:
                lane.final, lane.final_sent, lane.urgent = command, False, True
                lane.offer(command)
        deadline = time.monotonic() + timeout_s
        all_sent = True
        for lane in self._lanes:
            with lane.lock:
                while not lane.final_sent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._started:
                        log.warning("sink %s: the final command (seq %d, %s) was not sent within %.2f s; "
                                    "last error: %s", lane.sink.name, command.seq, command.reason or "no reason",
                                    timeout_s, lane.stats.last_error or "none")
                        all_sent = False
                        break
                    lane.done.wait(remaining)
        return all_sent

    def close(self) -> None:
        """Stop the workers (an unsent command is counted as dropped) and close the sinks.

        A set that published a moving command but never a final one (the process is leaving by a path that skipped
        the loop's own zero) sends a zero first: whatever ends the runtime, the robot's last command is a stop.
        """
        if self._started and self._last is not None and not self._final_published and not self._last.stop:
            log.warning("sinks closed without a final zero command: sending one (seq %d)", self._last.seq)
            self.publish_final(self._last.as_stop(SHUTDOWN_REASON))
        for lane in self._lanes:
            with lane.lock:
                lane.closing = True
                lane.work.notify()
        for lane in self._lanes:
            if lane.thread is not None:
                # Sends are bounded (serial write timeout, non-blocking UDP); stdout into a stalled pipe is not.
                lane.thread.join(timeout=2.0)
                if lane.thread.is_alive():
                    log.warning("sink %s: worker still blocked in a send after 2 s; closing the sink under it",
                                lane.sink.name)
            with lane.lock:
                if lane.pending is not None:
                    lane.stats.dropped += 1
                    lane.pending = None
            try:
                lane.sink.close()
            except Exception as exc:  # the other sinks must be closed whatever this one raises
                log.warning("sink %s: close failed: %s", lane.sink.name, exc)
        self._started = False

    def stats(self) -> dict[str, SinkStats]:
        out = {}
        for lane in self._lanes:
            with lane.lock:
                out[lane.sink.name] = replace(lane.stats)
        return out

    def _notify_recovered(self, name: str) -> None:
        if self.on_recovered is not None:
            self.on_recovered(name)

    def __enter__(self) -> SinkSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Worker:
    """One sink's thread: take the newest command, send it; on failure re-open with backoff, then send a zero."""

    def __init__(self, lane: _Lane, backoff_s: tuple[float, float], on_recovered: Callable[[str], None]) -> None:
        self.lane = lane
        self.name = lane.sink.name
        self.backoff_min, self.backoff_max = backoff_s
        self.backoff = self.backoff_min
        self.on_recovered = on_recovered
        self.broken = False  # the last send or re-open failed: re-open before sending again
        self.needs_zero = False  # re-opened after a failure: the next thing sent must be a zero
        self.retry_at = 0.0
        self.last_taken: VelocityCommand | None = None  # the command whose send failed, when broken
        self.unlogged = 0
        self.logged_at = -math.inf

    def run(self) -> None:
        while True:
            if self.broken:
                if not self.wait_for_retry():
                    return
                self.try_reopen()
                continue
            command = self.take()
            if command is None:
                return
            self.send(command)

    def wait_for_retry(self) -> bool:
        lane = self.lane
        with lane.lock:
            while not lane.closing and not lane.urgent and time.monotonic() < self.retry_at:
                lane.work.wait(self.retry_at - time.monotonic())
            lane.urgent = False
            return not lane.closing

    def try_reopen(self) -> None:
        try:
            self.lane.sink.reopen()
        except Exception as exc:
            with self.lane.lock:
                self.lane.stats.reopen_failed += 1
            self.note_failure("re-open", exc)
            self.backoff = min(self.backoff * 2, self.backoff_max)
            self.retry_at = time.monotonic() + self.backoff
            return
        with self.lane.lock:
            self.lane.stats.reconnects += 1
        self.broken = False
        self.needs_zero = True

    def take(self) -> VelocityCommand | None:
        """The newest command; right after a re-open with nothing new, the one whose send failed (for its zero)."""
        lane = self.lane
        with lane.lock:
            while lane.pending is None and not lane.closing and not self.needs_zero:
                lane.work.wait()
            if lane.closing:
                return None
            if lane.pending is not None:
                self.last_taken, lane.pending = lane.pending, None
        return self.last_taken

    def send(self, command: VelocityCommand) -> None:
        lane = self.lane
        # After a failure the robot may still hold the last velocity it got: send a zero before anything fresh
        # (a stop keeps its own reason, e.g. "shutdown").
        to_send = command.as_stop(RECOVERED_REASON) if self.needs_zero and not command.stop else command
        try:
            lane.sink.send(to_send)
        except Exception as exc:  # OSError/SinkError expected; nothing may kill the worker
            with lane.lock:
                lane.stats.failed += 1
            self.note_failure("send", exc)
            self.broken = True
            self.retry_at = time.monotonic() + self.backoff
            return
        with lane.lock:
            lane.stats.sent += 1
            recovered = not lane.stats.healthy
            lane.stats.healthy = True
            lane.urgent = False
            if command is lane.final:
                lane.final_sent = True
                lane.done.notify_all()
            last_error = lane.stats.last_error
        self.backoff = self.backoff_min
        self.needs_zero = False
        if recovered:
            log.info("sink %s: recovered, sent a zero first (last error: %s)", self.name, last_error)
            self.unlogged, self.logged_at = 0, -math.inf
            try:
                self.on_recovered(self.name)
            except Exception:
                log.exception("sink %s: on_recovered callback failed", self.name)

    def note_failure(self, what: str, exc: BaseException) -> None:
        error = f"{what}: {type(exc).__name__}: {exc}"
        with self.lane.lock:
            first = self.lane.stats.healthy
            self.lane.stats.last_error = error
            self.lane.stats.healthy = False
        self.unlogged += 1
        now = time.monotonic()
        if first:
            log.warning("sink %s: %s; its commands are dropped until it works again (retrying with backoff)",
                        self.name, error)
        elif now - self.logged_at >= LOG_EVERY_S:
            log.warning("sink %s: still failing (%d failures since the last report); last: %s",
                        self.name, self.unlogged, error)
        else:
            return
        self.unlogged, self.logged_at = 0, now
