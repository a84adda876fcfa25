"""Sinks against real endpoints: loopback UDP sockets, pseudo-terminals standing in for serial ports, stdout."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.errors import MobileVLAError
from runtime.sinks.base import VelocityCommand
from runtime.sinks.dispatch import open_sink
from runtime.sinks.fanout import SinkSet
from runtime.sinks.formats import command_record, encode_serial, nmea_checksum
from runtime.sinks.ros2 import ROS_HINT
from runtime.sinks.serial import SerialSink, parse_serial, serial_open_hint
from runtime.sinks.stdout import StdoutSink
from runtime.sinks.udp import UdpSink

needs_pyserial = pytest.mark.skipif(importlib.util.find_spec("serial") is None, reason="pyserial not installed")
SERIAL_LINE = re.compile(r"^\$(VEL,(\d+),(-?\d+\.\d{4}),(-?\d+\.\d{4}),(-?\d+\.\d{4}),([01]))\*([0-9A-F]{2})\r\n$")
FAST_BACKOFF = (0.05, 0.2)


def cmd(seq: int, vx: float = 0.25, vy: float = -0.1, wz: float = 0.0, stop: bool = False, reason: str = "",
        latency_ms: float | None = None) -> VelocityCommand:
    return VelocityCommand(seq, time.time(), vx, vy, wz, stop, reason, latency_ms)


def wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------------- fixtures




class Pty:
    """A pseudo-terminal: the sink opens the slave path like a serial port, the test reads the master side."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.buffer = b""
        self.master_open = True

    def read_line(self, timeout_s: float = 2.0) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line from the serial sink within {timeout_s} s (got {self.buffer!r})"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                self.buffer += os.read(self.master, 4096)
        line, _, self.buffer = self.buffer.partition(b"\n")
        return (line + b"\n").decode("ascii")

    def close_master(self) -> None:
        if self.master_open:
            os.close(self.master)
            self.master_open = False

    def close(self) -> None:
        self.close_master()
        os.close(self.slave)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def parse_serial_line(line: str) -> tuple[int, float, float, float, bool]:
    match = SERIAL_LINE.match(line)
    assert match, f"not a $VEL line: {line!r}"
    body, seq, vx, vy, wz, stop, checksum = match.groups()
    assert nmea_checksum(body) == checksum
    return int(seq), float(vx), float(vy), float(wz), stop == "1"


# ------------------------------------------------------------------------------------------------------ formats


def test_serial_line_format_and_checksum() -> None:
    line = encode_serial(VelocityCommand(42, 0.0, 0.25, -0.1, 0.0)).decode("ascii")
    assert line == "$VEL,42,0.2500,-0.1000,0.0000,0*" + nmea_checksum("VEL,42,0.2500,-0.1000,0.0000,0") + "\r\n"
    # The checksum is the XOR of every character between $ and *.
    value = 0
    for char in "VEL,42,0.2500,-0.1000,0.0000,0":
        value ^= ord(char)
    assert line[-4:-2] == f"{value:02X}"
    # A stop never reads "-0.0000", whatever tiny negative the policy produced.
    stop = encode_serial(VelocityCommand(7, 0.0, -0.00001, -0.0, 0.0, stop=True)).decode("ascii")
    assert parse_serial_line(stop) == (7, 0.0, 0.0, 0.0, True)
    assert "-0.0000" not in stop


def test_json_record_follows_twist_layout() -> None:
    record = command_record(VelocityCommand(3, 12.5, 0.3, -0.2, 0.1, stop=False, reason="", latency_ms=41.23456))
    assert record == {"seq": 3, "stamp": 12.5, "linear": [0.3, -0.2, 0.0], "angular": [0.0, 0.0, 0.1],
                      "stop": False, "reason": "", "latency_ms": 41.235}
    assert command_record(VelocityCommand(4, 1.0, stop=True, reason="stale frame"))["latency_ms"] is None


@pytest.mark.parametrize(("spec", "message"), [
    ("tcp:host:9000", "sink 'tcp:host:9000': unknown kind 'tcp'; expected one of: stdout (or -), udp:HOST:PORT, "
                      "serial:DEVICE[:BAUD], ros2[:TOPIC]"),
    ("none", "unknown kind 'none'"),
    ("udp:localhost", "sink 'udp:localhost': udp needs a host and a port: udp:HOST:PORT (IPv6: udp:[::1]:PORT)"),
    ("udp::9000", "empty host"),
    ("udp:localhost:http", "port 'http' is not a number in 1-65535"),
    ("udp:localhost:70000", "port '70000' is not a number in 1-65535"),
    ("udp:localhost:0", "port '0' is not a number in 1-65535"),
    ("udp:::1:9000", "an IPv6 address needs brackets: udp:[::1]:9000"),
    ("udp:[::1:9000", "unclosed IPv6 bracket; expected udp:[ADDRESS]:PORT"),
    ("serial", "sink 'serial': serial needs a device: serial:DEVICE[:BAUD], e.g. serial:/dev/ttyUSB0"),
    ("serial:", "serial needs a device"),
    ("serial:/dev/ttyUSB0:fast", "baud rate 'fast' is not a positive integer (e.g. 115200); "
                                 "expected serial:DEVICE[:BAUD]"),
    ("serial:/dev/ttyUSB0:0", "baud rate '0' is not a positive integer"),
])
def test_bad_specs_say_what_is_accepted(spec: str, message: str) -> None:
    with pytest.raises(MobileVLAError) as info:
        open_sink(spec)
    assert message in str(info.value)


def test_serial_spec_keeps_colons_of_by_path_names() -> None:
    by_path = "/dev/serial/by-path/platform-3610000.xhci-usb-0:2.1:1.0-port0"
    assert parse_serial(f"serial:{by_path}", by_path) == (by_path, 115200)
    assert parse_serial("serial:/dev/ttyTHS1:921600", "/dev/ttyTHS1:921600") == ("/dev/ttyTHS1", 921600)
    assert parse_serial(f"serial:{by_path}:57600", f"{by_path}:57600") == (by_path, 57600)


def test_ros2_without_rclpy_says_how_to_get_it() -> None:
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("rclpy is importable here: the missing-ROS message cannot be provoked")
    with pytest.raises(MobileVLAError) as info:
        open_sink("ros2")
    assert str(info.value) == ROS_HINT
    assert "ROS 2 sink needs rclpy: source /opt/ros/<distro>/setup.bash" in str(info.value)
    with pytest.raises(MobileVLAError, match="ROS 2 sink needs rclpy"):
        open_sink("ros2:/robot/cmd_vel")


def test_serial_without_pyserial_says_how_to_install_it() -> None:
    # A fresh interpreter in which `import serial` fails, as on a robot without the package.
    code = ("import sys; sys.modules['serial'] = None\n"
            "from runtime.errors import MobileVLAError\n"
            "from runtime.sinks.dispatch import open_sink\n"
            "try:\n    open_sink('serial:/dev/ttyUSB0')\n"
            "except MobileVLAError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).parents[3]).stdout
    assert out.strip() == ("sink serial:/dev/ttyUSB0 needs pyserial: `pip install pyserial` "
                           "(or apt install python3-serial)")


@needs_pyserial
def test_serial_port_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(MobileVLAError) as info:
        open_sink(f"serial:{tmp_path}/ttyUSB9")
    assert str(info.value).startswith(f"serial port {tmp_path}/ttyUSB9 is not present; check the cable")


def test_serial_open_hints_name_the_fix() -> None:
    # Tests run as root here, so a real EACCES cannot be provoked: check the mapping from errno to advice.
    denied = serial_open_hint("/dev/ttyUSB0", PermissionError(errno.EACCES, "Permission denied"))
    assert "permission denied; add the user to the dialout group" in denied
    assert "busy" in serial_open_hint("/dev/ttyUSB0", OSError(errno.EBUSY, "Device or resource busy"))


def test_unresolvable_udp_host() -> None:
    with pytest.raises(MobileVLAError, match=re.escape("cannot resolve or open 'no-such-host.invalid' port 9000")):
        open_sink("udp:no-such-host.invalid:9000")


def test_same_sink_twice_is_refused(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    both = [open_sink(f"udp:127.0.0.1:{port}"), open_sink(f"udp:127.0.0.1:{port}")]
    with pytest.raises(MobileVLAError, match=f"sink udp:127.0.0.1:{port} is configured twice"):
        SinkSet(both)
    for sink in both:
        sink.close()


# ----------------------------------------------------------------------------------------------- real delivery


def test_udp_datagrams_carry_the_json_object(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    sink = open_sink(f"udp:localhost:{port}")  # a name, resolved to the loopback address
    assert isinstance(sink, UdpSink)
    with SinkSet([sink]) as sinks:
        for seq in range(3):
            sinks.publish(cmd(seq, vx=0.1 * seq, wz=-0.05, latency_ms=30.0 + seq))
            data, _ = udp_receiver.recvfrom(65536)
            assert not data.endswith(b"\n")
            record = json.loads(data.decode("utf-8"))
            assert record["seq"] == seq
            assert record["linear"] == [pytest.approx(0.1 * seq), -0.1, 0.0]
            assert record["angular"] == [0.0, 0.0, -0.05]
            assert record["stop"] is False
            assert record["latency_ms"] == 30.0 + seq
            assert abs(record["stamp"] - time.time()) < 5
    # Closed without a final command: the set sends the zero itself, so the robot's last command is a stop.
    last = json.loads(udp_receiver.recvfrom(65536)[0])
    assert (last["seq"], last["stop"], last["reason"], last["linear"]) == (2, True, "shutdown", [0.0, 0.0, 0.0])
    stats = sinks.stats()[f"udp:localhost:{port}"]
    assert (stats.sent, stats.failed, stats.dropped) == (4, 0, 0)


def test_udp_over_ipv6_loopback() -> None:
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        receiver.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    receiver.settimeout(2.0)
    port = receiver.getsockname()[1]
    with receiver, SinkSet([open_sink(f"udp:[::1]:{port}")]) as sinks:
        assert sinks.names == [f"udp:[::1]:{port}"]
        assert sinks.publish_final(cmd(9, stop=True, vx=0.0, vy=0.0, reason="shutdown"))
        record = json.loads(receiver.recv(65536))
        assert (record["seq"], record["stop"], record["reason"]) == (9, True, "shutdown")


@needs_pyserial
def test_serial_lines_through_a_pty(pty: Pty) -> None:
    sink = open_sink(f"serial:{pty.path}:57600")
    assert isinstance(sink, SerialSink)
    with SinkSet([sink]) as sinks:
        sinks.publish(cmd(1, vx=0.3, vy=-0.12345, wz=0.5))
        assert parse_serial_line(pty.read_line()) == (1, 0.3, -0.1235, 0.5, False)
        sinks.publish(cmd(2, vx=0.0, vy=0.0, stop=True, reason="stale frame"))
        assert parse_serial_line(pty.read_line()) == (2, 0.0, 0.0, 0.0, True)


def test_stdout_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    sink = open_sink("-")
    assert isinstance(sink, StdoutSink)
    with SinkSet([sink]) as sinks:
        sinks.publish(cmd(5, vx=0.2))
        assert sinks.publish_final(cmd(6, vx=0.0, vy=0.0, stop=True, reason="shutdown"))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    last = records[-1]
    assert (last["seq"], last["stop"], last["reason"], last["linear"]) == (6, True, "shutdown", [0.0, 0.0, 0.0])
    assert [r["seq"] for r in records] in ([5, 6], [6])  # 5 may have been replaced by 6 before the worker sent it


def test_latest_value_mailbox_counts_drops(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    sinks = SinkSet([open_sink(f"udp:127.0.0.1:{port}")])
    for seq in range(10):  # the worker is not running yet: each command replaces the unsent one
        sinks.publish(cmd(seq))
    sinks.start()
    try:
        record = json.loads(udp_receiver.recv(65536))
        assert record["seq"] == 9
        wait_for(lambda: sinks.stats()[f"udp:127.0.0.1:{port}"].sent == 1)
        stats = sinks.stats()[f"udp:127.0.0.1:{port}"]
        assert (stats.sent, stats.dropped, stats.failed) == (1, 9, 0)
    finally:
        sinks.close()


def test_every_command_is_sent_dropped_or_failed(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    name = f"udp:127.0.0.1:{port}"
    with SinkSet([open_sink(name)]) as sinks:
        for seq in range(2000):
            sinks.publish(cmd(seq))
        assert sinks.publish_final(cmd(2000, stop=True, reason="shutdown"))
    stats = sinks.stats()[name]
    assert stats.sent + stats.dropped + stats.failed == 2001
    assert stats.failed == 0


# ----------------------------------------------------------------------------------------------------- failures


@needs_pyserial
def test_slow_serial_port_never_blocks_publish(pty: Pty) -> None:
    # Nobody reads the master: once the pty buffer is full every write waits out the sink's write timeout.
    name = f"serial:{pty.path}"
    with SinkSet([open_sink(name)], backoff_s=FAST_BACKOFF) as sinks:
        os.set_blocking(pty.slave, False)  # the test's own descriptor; the sink's stays blocking
        with pytest.raises(BlockingIOError):
            while True:  # fill the pty buffer: from now on every write of the sink times out
                os.write(pty.slave, b"x" * 256)
        start = time.perf_counter()
        for seq in range(1000):
            sinks.publish(cmd(seq))
        elapsed = time.perf_counter() - start
        assert elapsed < 0.05, f"publish of 1000 commands took {elapsed * 1000:.1f} ms with a stuck sink"
        seq = 1000

        def still_publishing_until_a_send_failed() -> bool:
            # The buffer may still take a few short lines; the 10 Hz loop keeps publishing until a write times out.
            nonlocal seq
            sinks.publish(cmd(seq))
            seq += 1
            return sinks.stats()[name].failed >= 1

        wait_for(still_publishing_until_a_send_failed)
        stats = sinks.stats()[name]
        assert "Write timeout" in stats.last_error
        assert stats.dropped >= 900
        assert not stats.healthy


@needs_pyserial
def test_vanished_device_counts_failures_and_final_times_out(pty: Pty) -> None:
    name = f"serial:{pty.path}"
    with SinkSet([open_sink(name)], backoff_s=FAST_BACKOFF) as sinks:
        sinks.publish(cmd(0))
        pty.read_line()
        pty.close_master()  # the USB adapter is unplugged: writes fail with EIO, the device node disappears
        start = time.perf_counter()
        for seq in range(1, 1001):
            sinks.publish(cmd(seq))
        assert time.perf_counter() - start < 0.05
        wait_for(lambda: sinks.stats()[name].reopen_failed >= 2)
        started = time.monotonic()
        assert not sinks.publish_final(cmd(1001, stop=True, reason="shutdown"), timeout_s=0.2)
        assert time.monotonic() - started < 0.5
    stats = sinks.stats()[name]
    assert stats.failed == 1  # one failed send, then re-opens fail (device gone) without further sends
    assert stats.sent == 1 and stats.reconnects == 0
    assert "could not open port" in stats.last_error


@needs_pyserial
def test_recovery_sends_a_zero_first_and_reports(tmp_path: Path) -> None:
    first, second = Pty(), Pty()
    link = tmp_path / "ttyROBOT"  # like /dev/serial/by-id/...: the name survives a re-plug, the pts behind it not
    link.symlink_to(first.path)
    recovered: list[str] = []
    name = f"serial:{link}"
    try:
        with SinkSet([open_sink(name)], on_recovered=recovered.append, backoff_s=FAST_BACKOFF) as sinks:
            sinks.publish(cmd(1, vx=0.3))
            assert parse_serial_line(first.read_line()) == (1, 0.3, -0.1, 0.0, False)
            first.close_master()
            sinks.publish(cmd(2, vx=0.35))
            wait_for(lambda: sinks.stats()[name].reopen_failed >= 1)
            assert recovered == []
            # The adapter comes back under the same name.
            link.unlink()
            link.symlink_to(second.path)
            sinks.publish(cmd(3, vx=0.4))
            seq, vx, vy, wz, stop = parse_serial_line(second.read_line())
            assert (vx, vy, wz, stop) == (0.0, 0.0, 0.0, True), "the first command after recovery must be a zero"
            # Sent at once after the re-open: the zero twin of the newest command not delivered (2 failed; 3 if it
            # was already waiting), so the receiver never sees a repeated sequence number.
            assert seq in (2, 3)
            wait_for(lambda: recovered == [name])
            sinks.publish(cmd(4, vx=0.45))
            assert parse_serial_line(second.read_line()) == (4, 0.45, -0.1, 0.0, False)
        stats = sinks.stats()[name]
        assert stats.failed == 1 and stats.reconnects == 1 and stats.healthy
    finally:
        first.close()
        second.close()


def test_recovered_zero_carries_the_reason(udp_receiver: socket.socket, tmp_path: Path) -> None:
    # A sink that fails once (stdout into a closed stream) and works after re-open: the JSON says why it stopped.
    port = udp_receiver.getsockname()[1]

    class ReopenedFile:
        """A real file sink whose first file is closed under it (like a log rotated away)."""

        name = "file"

        def __init__(self) -> None:
            self.path = tmp_path / "commands.jsonl"
            self.inner = StdoutSink(self.path.open("w"))
            self.stream = self.inner._stream
            self.stream.close()

        def send(self, command: VelocityCommand) -> None:
            self.inner.send(command)

        def reopen(self) -> None:
            self.inner = StdoutSink(self.path.open("a"))

        def close(self) -> None:
            self.inner._stream.close()

    recovered: list[str] = []
    sink = ReopenedFile()
    sinks = SinkSet([sink, open_sink(f"udp:127.0.0.1:{port}")], backoff_s=FAST_BACKOFF)
    sinks.on_recovered = recovered.append  # may be set after construction: the loop that owns it needs the set
    with sinks:
        sinks.publish(cmd(1, vx=0.3))
        assert json.loads(udp_receiver.recv(65536))["seq"] == 1  # the healthy sink is not held up
        wait_for(lambda: recovered == ["file"])
        sinks.publish(cmd(2, vx=0.3))
        wait_for(lambda: sinks.stats()["file"].sent == 2)
    lines = [json.loads(line) for line in sink.path.read_text().splitlines()]
    assert lines[0]["stop"] is True and lines[0]["reason"] == "sink recovered" and lines[0]["linear"] == [0, 0, 0]
    assert lines[1]["seq"] == 2 and lines[1]["linear"][0] == 0.3
