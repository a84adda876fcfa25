"""Fault injection, the robot left moving: every catchable terminating signal, an ssh disconnect on a foreground
run, and exceptions in the loop must end with a zero command as the last datagram the robot got."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.pipeline import PolicyPipeline
from runtime.schedule import LatestChunk
from runtime.signals import signal_name, terminating_signals
from tests.udp import drain

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def wait_until_moving(sock: socket.socket) -> None:
    """Block until the runtime publishes a moving (non-stop) command."""
    sock.settimeout(30.0)
    while json.loads(sock.recv(65536))["stop"]:
        pass


def runtime_command(bundle: Path, sock: socket.socket) -> list[str]:
    return [sys.executable, "-m", "runtime", "--bundle", str(bundle), "--source", "synthetic",
            "--sink", f"udp:127.0.0.1:{sock.getsockname()[1]}", "--control", "none", "--no-verify"]


SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGALRM, int(signal.SIGRTMIN) + 2]


@pytest.mark.parametrize("number", SIGNALS, ids=[signal_name(n) for n in SIGNALS])
def test_every_terminating_signal_sends_zero_last(number: int, demo_bundle: Path,
                                                  udp_receiver: socket.socket) -> None:
    process = subprocess.Popen(runtime_command(demo_bundle, udp_receiver), stderr=subprocess.PIPE, text=True,
                               env=ENV)
    try:
        wait_until_moving(udp_receiver)
        process.send_signal(number)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    last = drain(udp_receiver)[-1]
    assert last["stop"] is True and last["linear"] == [0.0, 0.0, 0.0] and last["reason"] == "shutdown", err
    graceful = number in (signal.SIGTERM, signal.SIGINT)
    assert process.returncode == (0 if graceful else 128 + number), err
    assert "Traceback" not in err
    if not graceful:
        assert f"received: stopping the robot and exiting with code {128 + number}" in err


def test_handled_signals_cover_every_default_terminating_one() -> None:
    handled = set(terminating_signals())
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF",
                 "SIGXCPU", "SIGXFSZ", "SIGPWR", "SIGIO"):
        assert int(getattr(signal, name)) in handled, name
    assert int(signal.SIGRTMIN) in handled and int(signal.SIGRTMAX) in handled
    assert int(signal.SIGKILL) not in handled and int(signal.SIGPIPE) not in handled


def test_ssh_disconnect_of_a_foreground_run_sends_zero_last(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    """A real controlling terminal that goes away (what an ssh disconnect does): the kernel sends SIGHUP and every
    later write to the terminal fails; the zero must still reach the robot."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execve(sys.executable, runtime_command(demo_bundle, udp_receiver), ENV)
    try:
        deadline = time.monotonic() + 30
        udp_receiver.setblocking(False)
        moving = False
        while not moving and time.monotonic() < deadline:  # drain the terminal so logging never blocks
            ready, _, _ = select.select([master, udp_receiver], [], [], 0.5)
            if master in ready:
                os.read(master, 65536)
            if udp_receiver in ready:
                moving = not json.loads(udp_receiver.recv(65536))["stop"]
        assert moving, "the runtime never published a moving command"
        os.close(master)  # hang up
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    udp_receiver.setblocking(True)
    last = drain(udp_receiver)[-1]
    assert last["stop"] is True and last["linear"] == [0.0, 0.0, 0.0]
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP


def test_exception_in_the_loop_sends_zero_then_raises(demo_bundle: Path, udp_receiver: socket.socket,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = PolicyPipeline.step
    calls = {"n": 0}

    def failing_step(self: PolicyPipeline, frame: object = None) -> object:
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("injected backend fault")
        return real_step(self, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(PolicyPipeline, "step", failing_step)
    with pytest.raises(RuntimeError, match="injected backend fault"):
        main(["--bundle", str(demo_bundle), "--sink", f"udp:127.0.0.1:{udp_receiver.getsockname()[1]}",
              "--control", "none", "--no-verify"])
    messages = drain(udp_receiver)
    # up to 5 moving commands (the sinks' mailbox keeps the newest: on a busy CPU the final zero can replace the
    # fifth before its worker sends it), then the zero
    moving = messages[:-1]
    assert 1 <= len(moving) <= 5 and not any(m["stop"] for m in moving), messages
    assert messages[-1]["stop"] is True and messages[-1]["reason"] == "fault"


def test_async_control_thread_failure_stops_the_run_with_zero(demo_bundle: Path, udp_receiver: socket.socket,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    real_at = LatestChunk.at
    calls = {"n": 0}

    def failing_at(self: LatestChunk, now: float) -> object:
        calls["n"] += 1
        if calls["n"] > 20:
            raise ValueError("injected control fault")
        return real_at(self, now)

    monkeypatch.setattr(LatestChunk, "at", failing_at)
    code = main(["--bundle", str(demo_bundle), "--schedule", "async", "--sink",
                 f"udp:127.0.0.1:{udp_receiver.getsockname()[1]}", "--control", "none", "--no-verify"])
    assert code == 1
    messages = drain(udp_receiver)
    assert any(not m["stop"] for m in messages)
    assert messages[-1]["stop"] is True and messages[-1]["reason"] == "fault"


def test_output_write_failure_stops_the_robot_with_a_message(demo_bundle: Path, udp_receiver: socket.socket,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    code = main(["--bundle", str(demo_bundle), "--sink", f"udp:127.0.0.1:{udp_receiver.getsockname()[1]}",
                 "--control", "none", "--no-verify", "--output", "/dev/full"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write the per-frame records to --output /dev/full: No space left on device; the robot was " \
           "stopped" in err
    last = drain(udp_receiver)[-1]
    assert last["stop"] is True and last["reason"] == "fault"


def test_a_late_publish_cannot_replace_the_final_zero(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    """The final zero is the last word: a thread that publishes after it (a slow control loop) is ignored."""
    from runtime.sinks.base import VelocityCommand
    from runtime.sinks.dispatch import open_sink
    from runtime.sinks.fanout import SinkSet

    with SinkSet([open_sink(f"udp:127.0.0.1:{udp_receiver.getsockname()[1]}")]) as sinks:
        sinks.publish(VelocityCommand(1, time.time(), 0.5))
        assert sinks.publish_final(VelocityCommand(2, time.time(), stop=True, reason="shutdown"))
        sinks.publish(VelocityCommand(3, time.time(), 0.7))
        time.sleep(0.2)
    messages = drain(udp_receiver)
    assert [m["seq"] for m in messages][-1] == 2 and messages[-1]["stop"] is True
