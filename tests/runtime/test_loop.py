"""The whole runtime loop with real sources, sinks and sockets: deadman, instructions, signals, schedules."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.onnxruntime import onnx_backend
from runtime.bundle import load_bundle
from runtime.cli import main
from runtime.config import RuntimeConfig, SafetyConfig, ScheduleConfig, SourceConfig
from runtime.control import InstructionBox, UdpInstructionListener
from runtime.loop import RuntimeLoop
from runtime.pipeline import PolicyPipeline
from runtime.safety import NO_INSTRUCTION, OVERRUN, SHUTDOWN
from runtime.sinks.dispatch import open_sink
from runtime.sinks.fanout import SinkSet
from runtime.sources.dispatch import open_source
from tests.udp import drain


def sink_spec(sock: socket.socket) -> str:
    return f"udp:127.0.0.1:{sock.getsockname()[1]}"


def make_loop(demo_bundle: Path, config: RuntimeConfig, sinks: list[str], frames: int | None,
              instruction: str | None = "turn left", **kwargs: object) -> tuple[RuntimeLoop, InstructionBox]:
    bundle = load_bundle(demo_bundle)
    backend = onnx_backend(bundle)
    backend.activate()
    pipeline = PolicyPipeline(bundle, backend, instruction)
    box = InstructionBox(instruction)
    source = open_source(config.source, bundle.manifest.preprocessing)
    sink_set = SinkSet([open_sink(spec) for spec in sinks])
    sink_set.start()
    loop = RuntimeLoop(config, pipeline, source, sink_set, box, frame_limit=frames, **kwargs)  # type: ignore[arg-type]
    return loop, box


def test_udp_sink_gets_every_command_then_a_final_zero(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    loop, _ = make_loop(demo_bundle, RuntimeConfig(), [sink_spec(udp_receiver)], frames=15)
    result = loop.run()
    loop.sinks.close()
    assert result.frames == 15 and result.exit_reason == "frame limit"
    messages = drain(udp_receiver)  # the sink's latest-value mailbox may drop a command in a burst, never reorder one
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and seqs[-1] == 16 and len(seqs) >= 12
    assert not any(m["stop"] for m in messages[:-1])
    assert messages[-1]["stop"] and messages[-1]["reason"] == SHUTDOWN
    assert messages[-1]["linear"] == [0.0, 0.0, 0.0]
    assert all(m["latency_ms"] is not None and m["latency_ms"] > 0 for m in messages[:-1])


def test_instruction_change_mid_run_takes_effect_next_frame_and_tokenizes_once(
        demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    listener_box: list[UdpInstructionListener] = []
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    control.settimeout(5.0)

    def on_result(got: object, result: object, command: object, instruction: str) -> None:
        seen.append(instruction)
        if len(seen) == 5:  # a remote operator changes the instruction while frame 5 is out
            control.sendto(json.dumps({"instruction": "turn right"}).encode(), listener_box[0].address)
            assert json.loads(control.recv(4096)) == {"ok": True, "instruction": "turn right"}

    loop, box = make_loop(demo_bundle, RuntimeConfig(), [], frames=10, on_result=on_result)
    encodes: list[str] = []
    original = loop.pipeline.encoder.encode
    monkeypatch.setattr(loop.pipeline.encoder, "encode", lambda text: encodes.append(text) or original(text))
    listener = UdpInstructionListener(box, "127.0.0.1", 0)
    listener_box.append(listener)
    listener.start()
    try:
        loop.run()
    finally:
        listener.close()
        control.close()
    assert seen == ["turn left"] * 5 + ["turn right"] * 5
    assert encodes == ["turn right"]


def test_no_instruction_holds_the_robot_until_one_arrives(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    sent = []

    def on_result(got: object, result: object, command: object, instruction: str) -> None:
        sent.append(command)

    loop, box = make_loop(demo_bundle, RuntimeConfig(), [sink_spec(udp_receiver)], frames=3, instruction=None,
                          on_result=on_result)
    box.offer(None, "test")  # cleared: the loop must not move
    original = loop.source.read_into
    calls = {"n": 0}

    def read_into(dest: np.ndarray, timeout_s: float) -> object:
        calls["n"] += 1
        if calls["n"] == 4:
            box.offer("go to the box", "test")
        return original(dest, timeout_s)

    loop.source.read_into = read_into  # type: ignore[method-assign]
    result = loop.run()
    loop.sinks.close()
    assert result.stops == {NO_INSTRUCTION: 3, SHUTDOWN: 1}  # the three frames before the instruction came
    # The sink's latest-value mailbox may replace some of a fast burst (even every early zero), never reorder one.
    messages = drain(udp_receiver)
    reasons = [m["reason"] for m in messages]
    assert reasons[-1] == SHUTDOWN
    moving = [i for i, m in enumerate(messages) if not m["stop"]]
    assert moving and reasons[: moving[0]] == [NO_INSTRUCTION] * moving[0]
    assert loop.pipeline.instruction == "go to the box" and len(sent) == 3


def test_overrun_publishes_zero_instead_of_a_late_command(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    config = RuntimeConfig(safety=SafetyConfig(max_latency_s=1e-6))
    loop, _ = make_loop(demo_bundle, config, [sink_spec(udp_receiver)], frames=4)
    result = loop.run()
    loop.sinks.close()
    assert result.stops == {OVERRUN: 4, SHUTDOWN: 1}
    assert all(m["stop"] for m in drain(udp_receiver))


def test_async_mode_publishes_at_the_control_rate(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    config = RuntimeConfig(schedule=ScheduleConfig(mode="async", rate_hz=50.0, step_s=0.1),
                           source=SourceConfig(spec="test", fps=15))
    pytest.importorskip("gi")
    loop, _ = make_loop(demo_bundle, config, [sink_spec(udp_receiver)], frames=12)
    loop.source.start()
    try:
        started = time.monotonic()
        loop.run()
        elapsed = time.monotonic() - started
    finally:
        loop.source.stop()
        loop.sinks.close()
    messages = drain(udp_receiver)
    moving = [m for m in messages if not m["stop"]]
    assert len(moving) >= 0.6 * 50 * elapsed - 5  # ~50 Hz while frames flow
    stamps = np.array([m["stamp"] for m in moving])
    assert np.median(np.diff(stamps)) == pytest.approx(0.02, abs=0.006)
    assert messages[-1]["reason"] == SHUTDOWN


def test_sigterm_publishes_zero_before_the_process_exits(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "--bundle", str(demo_bundle), "--source", "synthetic",
         "--sink", sink_spec(udp_receiver), "--control", "none"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = json.loads(udp_receiver.recv(65536))  # running: commands flow
        assert not first["stop"]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    messages = drain(udp_receiver)
    assert process.returncode == 0, err
    assert messages[-1]["stop"] and messages[-1]["reason"] == SHUTDOWN
    assert "stopped: signal SIGTERM" in err


def test_memory_guard_stops_with_zero_and_exit_code(demo_bundle: Path, tmp_path: Path, udp_receiver: socket.socket,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "guard.yaml"
    config.write_text("monitor: {interval_s: 0.1, warn_available_mb: 1000000000, guard_available_mb: 1000000000}\n"
                      "instruction: {control: none}\n")
    code = main(["--config", str(config), "--bundle", str(demo_bundle), "--sink", sink_spec(udp_receiver)])
    assert code == 3
    messages = drain(udp_receiver)
    assert messages[-1]["stop"] and messages[-1]["reason"] == "memory guard"
    assert "memory guard: MemAvailable" in caplog.text and "stopping before the OOM killer" in caplog.text


def test_config_file_drives_the_run(demo_bundle: Path, tmp_path: Path, udp_receiver: socket.socket) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_text(f"bundle: {demo_bundle}\nsinks: [{sink_spec(udp_receiver)}]\n"
                      "instruction: {control: none}\nsafety: {max_velocity: {linear_x: 0.01, linear_y: 0.02}}\n")
    assert main(["--config", str(config), "--frames", "6"]) == 0
    messages = drain(udp_receiver)
    assert messages[-1]["seq"] == 7 and messages[-1]["stop"]  # 6 frames + the final zero (none reordered)
    assert max(abs(m["linear"][0]) for m in messages) <= 0.01 + 1e-9
    assert max(abs(m["linear"][1]) for m in messages) <= 0.02 + 1e-9


def test_replaced_defaults_are_visible_in_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-config", "--schedule", "ensemble", "--sink", "udp:10.0.0.2:9000"]) == 0
    printed = capsys.readouterr().out
    assert "mode: ensemble" in printed and "udp:10.0.0.2:9000" in printed



def test_stalling_camera_zeroes_within_the_deadline_then_reconnects(demo_bundle: Path,
                                                                     udp_receiver: socket.socket) -> None:
    """A real GStreamer source (udpsrc) whose sender stops mid-run: zero within the frame deadline, then recovery."""
    pytest.importorskip("gi")
    import threading

    from tests.fakes.camera import UdpSender

    with UdpSender() as sender:
        source = SourceConfig(spec=sender.spec, stall_timeout_s=0.3, first_frame_timeout_s=2.0, backoff_s=0.05,
                              backoff_max_s=0.2, reconnect_attempts=10)
        config = RuntimeConfig(source=source, safety=SafetyConfig(frame_deadline_s=0.2))
        loop, _ = make_loop(demo_bundle, config, [sink_spec(udp_receiver)], frames=None)
        loop.source.start()
        runner = threading.Thread(target=loop.run)
        runner.start()
        try:
            udp_receiver.settimeout(5.0)
            while json.loads(udp_receiver.recv(65536))["stop"]:
                pass  # until the first real command
            sender.sending.clear()
            stalled_at = time.monotonic()
            while not (message := json.loads(udp_receiver.recv(65536)))["stop"]:
                stalled_at = time.monotonic()  # commands of frames still in flight
            zeroed_after = time.monotonic() - stalled_at
            assert message["reason"] == "stale frame"
            assert zeroed_after <= 0.2 + 0.1 + 0.2, zeroed_after  # deadline + one wait + scheduling slack
            time.sleep(0.5)  # long enough for the capture to give up on the pipeline and rebuild it
            sender.sending.set()
            while json.loads(udp_receiver.recv(65536))["stop"]:
                pass  # zeros until frames flow again
        finally:
            loop.request_stop("test over")
            runner.join(timeout=5)
            loop.source.stop()
            loop.sinks.close()
    assert loop.source.reconnects >= 1  # type: ignore[attr-defined]
    assert loop.safety.stops.get("stale frame", 0) >= 1


def test_sink_recovery_sends_zero_then_ramps(demo_bundle: Path, udp_receiver: socket.socket) -> None:
    config = RuntimeConfig(safety=SafetyConfig(max_accel={"linear_x": 0.5, "linear_y": 0.5}))
    sent: list[object] = []
    loop, _ = make_loop(demo_bundle, config, [sink_spec(udp_receiver)], frames=6,
                        on_result=lambda got, result, command, instruction: sent.append(command))
    original = loop._schedule

    def schedule(result: object, capture_time: float) -> object:
        if len(sent) == 3:
            loop.on_sink_recovered("udp:test")  # as the sink's worker thread would after a reopen
        return original(result, capture_time)  # type: ignore[arg-type]

    loop._schedule = schedule  # type: ignore[method-assign]
    loop.run()
    loop.sinks.close()
    reasons = [getattr(c, "reason", None) for c in sent]
    assert reasons[3] == "sink recovered" and sent[3].stop  # type: ignore[attr-defined]
    assert not sent[4].stop and abs(sent[4].linear_x) <= 0.5 * 0.2 + 1e-6  # type: ignore[attr-defined]
