"""runtime/diagnostics.py: the level and message `/diagnostics` carries, from the loop's status and a reading."""

from __future__ import annotations

from runtime.config import RuntimeConfig
from runtime.diagnostics import ERROR, OK, WARN, LoopStatus, diagnose
from runtime.health.base import HealthReading

READING = HealthReading(0.0, "proc", 8000.0, 3000.0, 5000.0, 0.0, 900.0, None, None, {"cpu": 50.0}, None, None)


def test_moving_is_ok_with_fps_and_backend() -> None:
    status = LoopStatus(30, 99.9, 42.0, "", {"shutdown": 0}, "tensorrt (int8)", "csi://0", "go")
    report = diagnose(status, 10.0, READING, RuntimeConfig(), now=100.0)
    values = dict(report.values)
    assert (report.level, report.message) == (OK, "10.0 FPS on tensorrt (int8)")
    assert values["latency_ms"] == "42.0" and values["rss_mb"] == "900.0" and values["temp_c.cpu"] == "50.0"
    assert values["frame_age_ms"] == "100.0"


def test_a_stalled_camera_is_an_error_and_a_held_robot_a_warning() -> None:
    stalled = LoopStatus(30, 90.0, None, "stale frame", {"stale frame": 12}, "onnxruntime", "csi://0")
    report = diagnose(stalled, 0.0, None, RuntimeConfig(), now=100.0)
    assert report.level == ERROR
    assert report.message == "no frame for 10.0 s from csi://0; holding zero velocity: stale frame (0.0 FPS on " \
                             "onnxruntime)"
    assert dict(report.values)["zero_commands.stale frame"] == "12"
    hot = HealthReading(0.0, "proc", 8000.0, 7600.0, 400.0, 0.0, 900.0, None, None, {"gpu": 91.0}, None, None)
    held = LoopStatus(5, 99.95, 30.0, "no instruction", {}, "onnxruntime", "test")
    report = diagnose(held, 5.0, hot, RuntimeConfig(), now=100.0)
    assert report.level == WARN and "holding zero velocity: no instruction" in report.message
    assert "MemAvailable 400 MB" in report.message and "hot: gpu 91 C" in report.message
    assert diagnose(LoopStatus(0, None, None, ""), 0.0, None, RuntimeConfig(), 1.0).message.startswith("no frame yet")
