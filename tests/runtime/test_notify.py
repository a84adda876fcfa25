"""The systemd notify protocol against a real unix datagram socket: READY, WATCHDOG only while frames flow, STOPPING."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.onnxruntime import onnx_backend
from runtime.bundle import load_bundle
from runtime.config import RuntimeConfig, SafetyConfig, SourceConfig
from runtime.control import InstructionBox
from runtime.loop import RuntimeLoop
from runtime.notify import SystemdNotifier, watchdog_interval
from runtime.pipeline import PolicyPipeline
from runtime.sinks.fanout import SinkSet
from runtime.sources.dispatch import open_source


class NotifySocket:
    """What systemd does: a datagram socket that collects (time received, message)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._quit.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if m.startswith(prefix)]

    def close(self) -> None:
        self._quit.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    collector = NotifySocket(tmp_path / "notify")
    yield collector
    collector.close()


def run_loop(demo_bundle: Path, notify: NotifySocket, config: RuntimeConfig, frames: int,
             interval_s: float = 0.05, on_frame: object = None) -> RuntimeLoop:
    bundle = load_bundle(demo_bundle)
    backend = onnx_backend(bundle)
    backend.activate()
    pipeline = PolicyPipeline(bundle, backend)
    source = open_source(config.source, bundle.manifest.preprocessing)
    sinks = SinkSet([])
    loop = RuntimeLoop(config, pipeline, source, sinks, InstructionBox(pipeline.instruction), frame_limit=frames,
                       on_result=on_frame,  # type: ignore[arg-type]
                       notifier=SystemdNotifier(notify.path, interval_s), health=lambda: "RSS 1 MB")
    source.start()
    try:
        loop.run()
    finally:
        source.stop()
    time.sleep(0.1)  # let the collector read the last datagrams
    return loop


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({}) is None
    assert not SystemdNotifier("").enabled and not SystemdNotifier("").send("READY=1")


def test_ready_after_first_inference_then_pings_while_frames_flow(demo_bundle: Path,
                                                                  notify_socket: NotifySocket) -> None:
    seen_at_first_frame: list[list[str]] = []

    def on_frame(*_: object) -> None:
        if not seen_at_first_frame:
            time.sleep(0.05)
            seen_at_first_frame.append([m for _, m in notify_socket.messages])

    started = time.monotonic()
    loop = run_loop(demo_bundle, notify_socket, RuntimeConfig(), frames=200, on_frame=on_frame)
    elapsed = time.monotonic() - started
    assert seen_at_first_frame[0][0].startswith("READY=1\nSTATUS=running onnxruntime-cpu")
    pings = notify_socket.times("WATCHDOG=1")
    assert len(pings) >= 0.5 * elapsed / 0.05, (len(pings), elapsed)
    assert max(np.diff(pings)) < 0.2  # steady while frames flow
    status = [m for _, m in notify_socket.messages if m.startswith("STATUS=")]
    assert status and " FPS, RSS 1 MB, 0 zero commands" in status[0]
    assert notify_socket.messages[-1][1] == "STOPPING=1\nSTATUS=stopping: frame limit"
    assert loop.notifier is not None and loop.notifier.ready_sent


def test_pings_stop_while_the_backend_hangs(demo_bundle: Path, notify_socket: NotifySocket) -> None:
    calls = {"n": 0}

    def on_frame(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 20:
            time.sleep(0.6)  # the loop thread is stuck (as in a hung inference)

    run_loop(demo_bundle, notify_socket, RuntimeConfig(), frames=60, on_frame=on_frame)
    pings = notify_socket.times("WATCHDOG=1")
    assert max(np.diff(pings)) >= 0.55  # no ping from anywhere while the loop was stuck
    assert len(pings) >= 3


def test_pings_stop_while_the_camera_stalls(demo_bundle: Path, notify_socket: NotifySocket) -> None:
    pytest.importorskip("gi")
    from tests.fakes.camera import UdpSender

    with UdpSender() as sender:
        source = SourceConfig(spec=sender.spec, stall_timeout_s=5.0, first_frame_timeout_s=2.0)
        config = RuntimeConfig(source=source, safety=SafetyConfig(frame_deadline_s=0.2))

        def on_frame(*_: object) -> None:
            if len(notify_socket.times("WATCHDOG=1")) == 3 and sender.sending.is_set():
                sender.sending.clear()
                threading.Timer(0.8, sender.sending.set).start()  # the camera comes back after 0.8 s

        run_loop(demo_bundle, notify_socket, config, frames=80, on_frame=on_frame)
    pings = notify_socket.times("WATCHDOG=1")
    assert max(np.diff(pings)) >= 0.7  # silent through the stall
    assert len(pings) > 4  # and pinging again once frames flowed


def test_sigterm_sends_stopping_and_a_zero_command(demo_bundle: Path, notify_socket: NotifySocket) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "--bundle", str(demo_bundle), "--control", "none",
         "--sink", f"udp:127.0.0.1:{receiver.getsockname()[1]}"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        receiver.recv(65536)
        deadline = time.monotonic() + 10
        while not notify_socket.times("WATCHDOG=1") and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    messages = []
    receiver.settimeout(0.3)
    while True:
        try:
            messages.append(json.loads(receiver.recv(65536)))
        except TimeoutError:
            break
    receiver.close()
    assert process.returncode == 0, err
    kinds = [m.split("=")[0] for _, m in notify_socket.messages]
    assert kinds[0] == "READY" and "WATCHDOG" in kinds and kinds[-1] == "STOPPING"
    assert "signal SIGTERM" in notify_socket.messages[-1][1]
    assert messages[-1]["stop"] and messages[-1]["reason"] == "shutdown"
