"""End of stream from a `gst:` source: a live one (GStreamer: no preroll) is a failure, reconnected and in the end a
non-zero exit, so systemd's Restart=on-failure restarts the service; a non-live one ends the run like a file.

Real GStreamer (videotestsrc with and without is-live) and the real CLI. Skipped when PyGObject is missing.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gi", reason="camera capture needs PyGObject (pip install 'PyGObject<3.51' or apt python3-gi)")

from runtime.cli import main
from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.sources.base import CaptureError
from runtime.sources.gstreamer.buffer import gst_modules
from runtime.sources.gstreamer.capture import GstCapture

try:
    _HAVE_TESTSRC = gst_modules().Gst.ElementFactory.find("videotestsrc") is not None
except MobileVLAError:
    _HAVE_TESTSRC = False
pytestmark = pytest.mark.skipif(not _HAVE_TESTSRC, reason="GStreamer with videotestsrc (plugins-base) is missing")

LIVE = "gst:videotestsrc is-live=true num-buffers=20"  # 20 frames at 30 fps: each run ends after ~0.7 s
NOT_LIVE = "gst:videotestsrc num-buffers=20"
QUICK = SourceConfig(reconnect_attempts=2, backoff_s=0.05, backoff_max_s=0.2)
GAVE_UP = (f"capture source '{LIVE}' failed: the live source ended the stream (3 times in a row); gave up after 2 "
           "reconnects in a row that each ended the stream again within 30 s")


def capture_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "runtime.capture"]


def test_live_gst_source_that_ends_reconnects_with_backoff_then_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "runtime.capture")
    dest = np.zeros((32, 32, 4), np.uint8)
    frames = 0
    start = time.monotonic()
    with GstCapture(LIVE, Preprocessing(image_size=32), QUICK) as cap:
        with pytest.raises(CaptureError) as info:
            while True:
                result = cap.read_into(dest, 0.5)
                assert result.status in ("frame", "timeout"), result  # never "end": a live source does not end
                frames += result.status == "frame"
        assert cap.reconnects == 2 and cap._pipeline is None
    assert str(info.value).startswith(GAVE_UP + f" ({frames} frames delivered before). Likely cause: your GStreamer")
    assert 3 <= frames <= 60  # every run delivered frames, and still they count as failed attempts
    assert 1.5 < time.monotonic() - start < 6.0  # three runs of ~0.7 s plus 0.05 + 0.1 s of backoff
    messages = capture_messages(caplog)
    assert messages[0].startswith(f"capture {LIVE} started (live): ")
    failures = [m for m in messages if "ended the stream" in m or "reconnect attempt" in m]
    assert [m.split(": ", 1)[1].split(" (")[0] for m in failures] == [
        "the live source ended the stream", "reconnect attempt 1/2",
        "the live source ended the stream", "reconnect attempt 2/2",
    ]
    assert failures[0].endswith("0 failed reconnects); reconnecting in 0.05 s")
    assert "(2 times in a row)" in failures[2] and failures[2].endswith("1 failed reconnects); reconnecting in 0.10 s")


def test_live_source_that_streamed_for_long_enough_starts_a_fresh_count(caplog: pytest.LogCaptureFixture) -> None:
    """A camera that hiccups now and then (each run longer than healthy_run_s) is reconnected every time."""
    settings = SourceConfig(reconnect_attempts=1, backoff_s=0.05, backoff_max_s=0.2, healthy_run_s=0.2)
    dest = np.zeros((32, 32, 4), np.uint8)
    with GstCapture(LIVE, Preprocessing(image_size=32), settings) as cap:
        deadline = time.monotonic() + 10.0
        while cap.reconnects < 3:  # with reconnect_attempts 1, a counted failure would have raised at the 2nd end
            assert cap.read_into(dest, 0.5).status in ("frame", "timeout")
            assert time.monotonic() < deadline, "no third reconnect within 10 s"
    ends = [m for m in capture_messages(caplog) if "ended the stream" in m]
    assert len(ends) == 3 and not any("in a row" in m for m in ends)


def test_non_live_gst_source_ends_like_a_file(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "runtime.capture")
    dest = np.zeros((32, 32, 4), np.uint8)
    statuses = []
    with GstCapture(NOT_LIVE, Preprocessing(image_size=32), QUICK) as cap:
        while (result := cap.read_into(dest, 2.0)).status != "end":
            statuses.append(result.status)
        assert cap.reconnects == 0
        assert cap.read_into(dest, 0.1).status == "end"  # and stays ended
    assert 1 <= len(statuses) <= 20 and set(statuses) == {"frame"}  # latest-frame semantics may skip frames
    messages = capture_messages(caplog)
    assert messages[0].startswith(f"capture {NOT_LIVE} started (not live): ")
    assert messages[-1] == (f"capture {NOT_LIVE}: end of stream from a non-live source (it prerolled) after "
                            f"{len(statuses)} frames: the source ends here")


def run_cli(demo_bundle: Path, tmp_path: Path, source: str, receiver: socket.socket) -> int:
    config = tmp_path / "runtime.yaml"
    config.write_text("source: {reconnect_attempts: 2, backoff_s: 0.05, backoff_max_s: 0.2}\n"
                      "instruction: {control: none}\nmonitor: {enabled: false}\n")
    return main(["--config", str(config), "--bundle", str(demo_bundle), "--source", source,
                 "--sink", f"udp:127.0.0.1:{receiver.getsockname()[1]}"])


def last_command(receiver: socket.socket) -> dict[str, object]:
    receiver.settimeout(0.3)
    last: dict[str, object] = {}
    while True:
        try:
            last = json.loads(receiver.recv(65536))
        except TimeoutError:
            return last


def test_cli_exits_non_zero_when_a_live_gst_source_keeps_ending(
        demo_bundle: Path, tmp_path: Path, udp_receiver: socket.socket, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    assert run_cli(demo_bundle, tmp_path, LIVE, udp_receiver) == 2  # systemd's Restart=on-failure restarts it
    assert f"runtime: error: {GAVE_UP} (" in capsys.readouterr().err
    assert "reconnect attempt 2/2" in caplog.text
    command = last_command(udp_receiver)
    assert command["stop"] is True and command["linear"] == [0.0, 0.0, 0.0]  # the robot was stopped on the way out


def test_cli_exits_zero_when_a_non_live_gst_source_ends(
        demo_bundle: Path, tmp_path: Path, udp_receiver: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert run_cli(demo_bundle, tmp_path, NOT_LIVE, udp_receiver) == 0
    assert f"capture {NOT_LIVE}: end of stream from a non-live source (it prerolled)" in caplog.text
    assert "stopped: end of source" in caplog.text and "reconnect" not in caplog.text
    assert last_command(udp_receiver)["stop"] is True
