"""GStreamer capture with real pipelines: videotestsrc, encoded files, a UDP source that stalls, an appsrc that repeats.

No mocks: every test runs GStreamer for real. Skipped as a whole when PyGObject or the base plugins are missing.
"""

from __future__ import annotations

import gc
import itertools
import socket
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gi", reason="camera capture needs PyGObject (pip install 'PyGObject<3.51' or apt python3-gi)")

# Imported after the importorskip: runtime.sources.gstreamer itself imports without gi, but the tests need it.
from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing, prepare_frame
from runtime.sources.base import CaptureError, CaptureResult
from runtime.sources.gstreamer.buffer import BufferMapper, buffer_address, gst_modules
from runtime.sources.gstreamer.capture import GstCapture
from runtime.sources.gstreamer.pipeline import SINK_NAME, pipeline_description
from tests.fakes.camera import UdpSender

NEEDED = ("videotestsrc", "videoconvert", "videoscale", "appsink", "appsrc", "udpsrc", "uridecodebin", "jpegenc",
          "avimux", "videoflip")


def _gstreamer() -> Any:
    try:
        gst = gst_modules().Gst
    except MobileVLAError as exc:
        pytest.skip(f"GStreamer through PyGObject is unavailable: {exc}", allow_module_level=True)
    missing = [name for name in NEEDED if gst.ElementFactory.find(name) is None]
    if missing:
        pytest.skip(f"GStreamer elements missing: {', '.join(missing)} (apt: gstreamer1.0-plugins-base, "
                    "gstreamer1.0-plugins-good)", allow_module_level=True)
    return gst


Gst = _gstreamer()
PRE = Preprocessing()  # 224, RGBA
SOLID_RGB = (200, 40, 90)


def encode_video(path: Path, source: str, frames: int) -> Path:
    """A real MJPEG/AVI file from videotestsrc (the encoders every GStreamer install has)."""
    pipeline = Gst.parse_launch(
        f"{source} num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! "
        f'video/x-raw,format=RGB ! jpegenc quality=95 ! avimux ! filesink location="{path}"'
    )
    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    assert message is not None and message.type == Gst.MessageType.EOS, "encoding the test video failed"
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("videos")
    argb = 0xFF000000 | SOLID_RGB[0] << 16 | SOLID_RGB[1] << 8 | SOLID_RGB[2]
    return {
        "ball": encode_video(directory / "ball.avi", "videotestsrc pattern=ball", 12),
        "solid": encode_video(directory / "solid.avi", f"videotestsrc pattern=solid-color foreground-color={argb}", 3),
    }


def read_frames(cap: GstCapture, dest: np.ndarray, count: int, timeout_s: float = 2.0) -> list[CaptureResult]:
    results: list[CaptureResult] = []
    while len(results) < count:
        result = cap.read_into(dest, timeout_s)
        assert result.status == "frame", result
        results.append(result)
    return results


def state_of(pipeline: Any) -> Any:
    return pipeline.get_state(0)[1]


# --- descriptions and specs -----------------------------------------------------------------------------------------


def test_csi_description_scales_in_the_vic_with_latest_frame_appsink() -> None:
    settings = SourceConfig(sensor_mode=(1920, 1080), fps=60, flip_method=2)
    description = pipeline_description("csi:1", PRE, settings)
    assert description.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=60/1" in description
    vic = "nvvidconv interpolation-method=5 flip-method=2 ! video/x-raw,width=224,height=224,format=RGBA ! appsink"
    assert vic in description
    assert "appsink drop=true max-buffers=1 sync=false emit-signals=false" in description
    assert "videoconvert" not in description  # the CPU never touches camera pixels
    assert "sensor-id=0 " in pipeline_description("csi", PRE, SourceConfig())
    rgb = pipeline_description("csi:0", Preprocessing(frame_format="RGB"), SourceConfig())
    assert "format=RGBA ! videoconvert ! video/x-raw,format=RGB ! appsink" in rgb


def test_cpu_source_descriptions(tmp_path: Path) -> None:
    settings = SourceConfig(fps=15, flip_method=1)
    v4l2 = pipeline_description("v4l2:/dev/video3", PRE, settings)
    assert v4l2.startswith("v4l2src device=/dev/video3 ! videoscale method=bilinear2 ! videoconvert ! "
                           "videoflip method=counterclockwise")
    assert "video/x-raw,width=224,height=224,format=RGBA ! appsink drop=true max-buffers=1 sync=false" in v4l2
    test = pipeline_description("test", PRE, SourceConfig())
    assert "videotestsrc is-live=true pattern=ball ! video/x-raw,width=224,height=224,framerate=30/1" in test
    video = tmp_path / "a clip.avi"
    synced = pipeline_description(f"file:{video}", PRE, SourceConfig())
    assert f"uridecodebin uri={video.as_uri()} !" in synced and "drop=true max-buffers=1 sync=true" in synced
    unsynced = pipeline_description(f"file:{video}", PRE, SourceConfig(file_sync=False))
    assert "drop=false max-buffers=1 sync=false" in unsynced  # every frame, as fast as they are read
    custom = pipeline_description("gst:rtspsrc location=rtsp://cam/1 ! decodebin", PRE, SourceConfig())
    assert custom.startswith("rtspsrc location=rtsp://cam/1 ! decodebin ! videoscale method=bilinear2 ! "
                             "videoconvert ! ")


def test_network_and_jetson_utils_descriptions() -> None:
    settings = SourceConfig(flip_method=2)
    assert pipeline_description("csi://1", PRE, settings) == pipeline_description("csi:1", PRE, settings)
    assert pipeline_description("/dev/video2", PRE, settings).startswith("v4l2src device=/dev/video2 ! ")
    assert pipeline_description("v4l2:///dev/video2", PRE, settings).startswith("v4l2src device=/dev/video2 ! ")
    rtsp_hw = pipeline_description("rtsp://127.0.0.1:8554/cam", PRE, settings, hardware=True)
    assert rtsp_hw.startswith("rtspsrc location=rtsp://127.0.0.1:8554/cam latency=100 ! decodebin ! nvvidconv "
                              "interpolation-method=5 flip-method=2 ! video/x-raw,width=224,height=224,format=RGBA ! "
                              "appsink")
    rtsp_sw = pipeline_description("rtsp://127.0.0.1:8554/cam", PRE, settings, hardware=False)
    assert "decodebin ! videoscale method=bilinear2 ! videoconvert ! videoflip method=rotate-180 ! " in rtsp_sw
    h264 = pipeline_description("rtp://@:5000", PRE, SourceConfig(), hardware=True)
    assert h264.startswith('udpsrc address=0.0.0.0 port=5000 caps="application/x-rtp,media=video,encoding-name=H264,'
                           'clock-rate=90000,payload=96" ! rtpjitterbuffer latency=50 ! rtph264depay ! h264parse ! '
                           'nvv4l2decoder ! nvvidconv interpolation-method=5 flip-method=0 ! ')
    assert "rtph265depay ! h265parse ! avdec_h265 ! videoscale" in pipeline_description(
        "rtp://127.0.0.1:5000?codec=h265", PRE, SourceConfig(), hardware=False)
    assert "rtpjpegdepay ! jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv" in pipeline_description(
        "rtp://@:5000?codec=mjpeg", PRE, SourceConfig(), hardware=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


RTP_SENDERS = {
    "mjpeg": ("jpegenc ! rtpjpegpay", ()),  # RTP JPEG (RFC 2435) carries 4:2:0 or 4:2:2 only
    # config-interval=-1: SPS/PPS with every key frame, so a receiver that joins late can start decoding
    "h264": ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay pt=96 config-interval=-1",
             (("x264enc", "gstreamer1.0-plugins-ugly"), ("avdec_h264", "gstreamer1.0-libav"),
              ("h264parse", "gstreamer1.0-plugins-bad"))),
}


@pytest.mark.parametrize("codec", sorted(RTP_SENDERS))
def test_rtp_stream_on_loopback_delivers_frames(codec: str) -> None:
    encode, elements = RTP_SENDERS[codec]
    missing = [f"{name} ({package})" for name, package in elements if Gst.ElementFactory.find(name) is None]
    if missing:
        pytest.skip(f"GStreamer elements missing: {', '.join(missing)}")
    port = free_udp_port()
    sender = Gst.parse_launch(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=64,height=64,framerate=30/1 ! "
        f"{encode} ! udpsink host=127.0.0.1 port={port}")
    dest = np.zeros((224, 224, 4), np.uint8)
    sender.set_state(Gst.State.PLAYING)  # UDP: sending before anyone listens loses only those packets
    try:
        with GstCapture(f"rtp://127.0.0.1:{port}?codec={codec}", PRE, SourceConfig()) as cap:
            results = read_frames(cap, dest, 3, timeout_s=5.0)
    finally:
        sender.set_state(Gst.State.NULL)
    assert [r.status for r in results] == ["frame"] * 3 and dest.any()


def test_file_uri_plays_the_file(videos: dict[str, Path]) -> None:
    dest = np.zeros((224, 224, 4), np.uint8)
    with GstCapture(f"file://{videos['ball']}", PRE, SourceConfig(file_sync=False)) as cap:
        assert [r.status for r in read_frames(cap, dest, 3)] == ["frame"] * 3


def test_bad_specs_and_settings_are_explained(tmp_path: Path) -> None:
    with pytest.raises(MobileVLAError, match=r"unknown capture source 'http://cam'; expected csi\[:SENSOR_ID\]"):
        GstCapture("http://cam", PRE, SourceConfig()).start()
    with pytest.raises(MobileVLAError, match=r"the CSI sensor id must be a number"):
        GstCapture("csi:left", PRE, SourceConfig())
    with pytest.raises(MobileVLAError, match=rf"no such file {tmp_path / 'missing.mp4'}"):
        GstCapture(f"file:{tmp_path / 'missing.mp4'}", PRE, SourceConfig()).start()
    with pytest.raises(MobileVLAError, match=r"no such device /dev/video99; list cameras with v4l2-ctl"):
        GstCapture("v4l2:/dev/video99", PRE, SourceConfig()).start()
    with pytest.raises(MobileVLAError, match=r"no element \\?\"?nosuchelement"):
        GstCapture("gst:nosuchelement", PRE, SourceConfig()).start()
    with pytest.raises(MobileVLAError, match=r"is not a video device"):
        GstCapture(f"v4l2:{tmp_path}", PRE, SourceConfig()).start()
    # A character device that is no camera: v4l2src fails at start, and the message names the likely causes.
    with pytest.raises(MobileVLAError, match=r"'v4l2:/dev/null' did not start: .*unplugged.*video group"):
        GstCapture("v4l2:/dev/null", PRE, SourceConfig()).start()
    not_a_video = tmp_path / "notes.avi"
    not_a_video.write_text("not a video\n" * 100)
    with pytest.raises(MobileVLAError, match=r"did not start: .*not a video GStreamer can decode"):
        GstCapture(f"file:{not_a_video}", PRE, SourceConfig()).start()
    # the capture's settings are the config's section, checked on construction like the file and the flags
    with pytest.raises(MobileVLAError, match=r"config key `source.flip_method` has value 9; allowed: an integer >= 0 "
                                             r"<= 7"):
        SourceConfig(flip_method=9)
    with pytest.raises(MobileVLAError, match=r"`source.backoff_max_s` has value 1.0; allowed: at least "
                                             r"source.backoff_s \(2\)"):
        SourceConfig(backoff_s=2.0, backoff_max_s=1.0)


@pytest.mark.skipif(Gst.ElementFactory.find("nvarguscamerasrc") is not None, reason="this machine is a Jetson")
def test_csi_off_jetson_says_what_is_missing() -> None:
    with pytest.raises(MobileVLAError, match=r"nvarguscamerasrc is not installed: csi capture needs a Jetson with "
                                             r"JetPack's GStreamer plugins"):
        GstCapture("csi:0", PRE, SourceConfig()).start()


# --- the test source and buffer mapping ------------------------------------------------------------------------------


def test_test_source_frames_move_and_carry_monotonic_capture_times() -> None:
    dest = np.zeros((224, 224, 4), np.uint8)
    frames = []
    with GstCapture("test", PRE, SourceConfig(sensor_mode=(640, 360))) as cap:
        results = []
        for _ in range(6):
            results.extend(read_frames(cap, dest, 1))
            frames.append(dest.copy())
            assert 0.0 <= time.monotonic() - results[-1].capture_time < 0.2
    assert [r.index for r in results] == [1, 2, 3, 4, 5, 6]
    times = [r.capture_time for r in results]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert all(r.pts_ns is not None for r in results)
    pts = [r.pts_ns or 0 for r in results]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert (frames[0][..., 3] == 255).all()  # opaque alpha, as prepare_frame writes
    assert not np.array_equal(frames[0], frames[-1])  # the ball moves


def test_buffer_map_is_zero_copy_and_equals_extract_dup() -> None:
    """PyGObject's hash(Gst.Buffer) is the GstBuffer*: the ctypes map must see exactly extract_dup's bytes."""
    pipeline = Gst.parse_launch(pipeline_description("test", Preprocessing(image_size=32), SourceConfig()))
    sink = pipeline.get_by_name(SINK_NAME)
    pipeline.set_state(Gst.State.PLAYING)
    mapper = BufferMapper()
    try:
        for _ in range(3):
            sample = sink.try_pull_sample(2 * Gst.SECOND)
            assert sample is not None
            buffer = sample.get_buffer()
            view = mapper.map(buffer)
            try:
                assert view.__array_interface__["data"][0] == mapper.data_address  # a view of GStreamer's memory
                assert view.tobytes() == buffer.extract_dup(0, buffer.get_size())
                assert buffer_address(buffer) == hash(sample.get_buffer())  # the same GstBuffer, re-wrapped
            finally:
                del view
                mapper.unmap()
    finally:
        pipeline.set_state(Gst.State.NULL)


def test_read_into_does_not_grow_memory() -> None:
    """Steady state allocates nothing that survives a frame (the main loop checks < 64 KB over 1000 frames)."""
    pre = Preprocessing(image_size=64)
    dest = np.zeros((64, 64, 4), np.uint8)
    with GstCapture("gst:videotestsrc pattern=ball ! video/x-raw,width=96,height=96", pre, SourceConfig()) as cap:
        read_frames(cap, dest, 50)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(1000):
                assert cap.read_into(dest, 2.0).status == "frame"
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, growth


# --- files -----------------------------------------------------------------------------------------------------------


def test_file_unsynced_delivers_every_frame_then_end(videos: dict[str, Path]) -> None:
    dest = np.zeros((224, 224, 4), np.uint8)
    frames = []
    with GstCapture(f"file:{videos['ball']}", PRE, SourceConfig(file_sync=False)) as cap:
        while (result := cap.read_into(dest, 2.0)).status == "frame":
            frames.append(dest.copy())
        assert result.status == "end" and result.index == 12
        assert cap.read_into(dest, 0.5).status == "end"
    assert len(frames) == 12
    assert not np.array_equal(frames[0], frames[6])


def test_file_synced_plays_at_its_frame_rate_and_loops(videos: dict[str, Path]) -> None:
    dest = np.zeros((224, 224, 4), np.uint8)
    start = time.monotonic()
    with GstCapture(f"file:{videos['ball']}", PRE, SourceConfig(file_loop=True)) as cap:
        results = read_frames(cap, dest, 2)
        while (results[-1].pts_ns or 0) > (results[-2].pts_ns or 0):  # until the file starts over (PTS goes back)
            results.extend(read_frames(cap, dest, 1))
            assert len(results) < 40, "the file did not loop"
    elapsed = time.monotonic() - start
    assert elapsed > 0.35  # synced to the clock: 12 frames at 30 fps take 0.4 s, decoding them takes ~10 ms
    assert all(0.0 < time.monotonic() - r.capture_time < 5.0 for r in results)


@pytest.mark.parametrize(("frame_format", "size"), [("RGBA", 224), ("BGRA", 224), ("RGB", 30), ("BGR", 30)])
def test_file_colours_match_prepare_frame(videos: dict[str, Path], frame_format: str, size: int) -> None:
    """A solid-colour video arrives in the frame_format's channel order; RGB at 30 px has padded rows (stride 92)."""
    pre = Preprocessing(image_size=size, frame_format=frame_format)
    dest = np.zeros((size, size, pre.channels), np.uint8)
    with GstCapture(f"file:{videos['solid']}", pre, SourceConfig(file_sync=False)) as cap:
        read_frames(cap, dest, 1)
    want = prepare_frame(np.full((240, 320, 3), SOLID_RGB, np.uint8), "rgb", pre)
    assert np.abs(dest.astype(int) - want).max() <= 8  # JPEG + YUV round trip


def test_finite_gst_source_ends() -> None:
    pre = Preprocessing(image_size=32)
    dest = np.zeros((32, 32, 4), np.uint8)
    statuses = []
    with GstCapture("gst:videotestsrc num-buffers=3 ! video/x-raw,width=48,height=48", pre, SourceConfig()) as cap:
        while (result := cap.read_into(dest, 2.0)).status != "end":
            statuses.append(result.status)
    assert 1 <= len(statuses) <= 3 and set(statuses) == {"frame"}  # latest-frame semantics may skip frames


# --- stalls, repeats, lifecycle ---------------------------------------------------------------------------------------


STALL = SourceConfig(stall_timeout_s=0.3, first_frame_timeout_s=0.4, backoff_s=0.05, backoff_max_s=0.2,
                        reconnect_attempts=3)


def test_stall_times_out_on_time_then_reconnects_and_recovers() -> None:
    pre = Preprocessing(image_size=32)
    dest = np.zeros((32, 32, 4), np.uint8)
    with UdpSender() as sender, GstCapture(sender.spec, pre, STALL) as cap:
        read_frames(cap, dest, 3)
        sender.sending.clear()
        reads = []
        while cap.reconnects == 0:
            start = time.monotonic()
            result = cap.read_into(dest, 0.1)
            reads.append((result.status, time.monotonic() - start))
            assert len(reads) < 20, "no reconnect within 2 s of the stall"
        assert {status for status, _ in reads} == {"timeout"}
        assert all(0.09 <= elapsed <= 0.25 for _, elapsed in reads), reads  # the deadman's deadline holds
        sender.sending.set()
        deadline = time.monotonic() + 3.0
        while (result := cap.read_into(dest, 0.1)).status != "frame":
            assert time.monotonic() < deadline, "frames did not flow again after the sender resumed"
        assert result.index == 4 and (dest == dest[0, 0, 0]).all()
        assert cap.reconnects >= 1


def test_source_that_never_returns_raises_capture_error_after_the_attempts() -> None:
    pre = Preprocessing(image_size=32)
    dest = np.zeros((32, 32, 4), np.uint8)
    with UdpSender() as sender, GstCapture(sender.spec, pre, STALL) as cap:
        read_frames(cap, dest, 2)
        sender.sending.clear()
        start = time.monotonic()
        with pytest.raises(CaptureError, match=r"failed: no first frame within 0.4 s; gave up after 3 failed "
                                               r"reconnect attempts .*Likely cause: your GStreamer description"):
            while True:
                before = time.monotonic()
                assert cap.read_into(dest, 0.1).status == "timeout"
                assert time.monotonic() - before <= 0.25
        # stall 0.3 s + 3 attempts of (backoff 0.05/0.1/0.2 s + 0.4 s without a first frame) ~= 1.85 s
        assert 1.5 < time.monotonic() - start < 4.0
        assert cap.reconnects == 3
        assert cap._pipeline is None  # torn down before raising


def test_source_that_never_starts_fails_through_the_same_path() -> None:
    settings = SourceConfig(first_frame_timeout_s=0.2, backoff_s=0.05, reconnect_attempts=1)
    dest = np.zeros((32, 32, 4), np.uint8)
    sender = UdpSender()  # never started: nothing is ever sent
    with GstCapture(sender.spec, Preprocessing(image_size=32), settings) as cap, pytest.raises(
        CaptureError, match=r"no first frame within 0.2 s; gave up after 1 failed reconnect attempts over 0.[4-9] s "
                            r"\(0 frames delivered before\)"
    ):
        while True:
            assert cap.read_into(dest, 0.1).status == "timeout"


def test_repeated_timestamp_is_reported_as_repeat_without_copying() -> None:
    """Argus re-delivers its last frame after a fault: same PTS -> "repeat", dest untouched."""
    pre = Preprocessing(image_size=16)
    dest = np.zeros((16, 16, 4), np.uint8)
    spec = ("gst:appsrc name=feeder is-live=true format=time do-timestamp=false "
            "caps=video/x-raw,format=RGBA,width=16,height=16,framerate=30/1")
    with GstCapture(spec, pre, SourceConfig()) as cap:
        feeder = cap._pipeline.get_by_name("feeder")

        def push(value: int, pts: int) -> None:
            buffer = Gst.Buffer.new_wrapped(bytes([value]) * (16 * 16 * 4))
            buffer.pts, buffer.duration = pts, Gst.SECOND // 30
            assert feeder.emit("push-buffer", buffer) == Gst.FlowReturn.OK

        push(10, 0)
        assert cap.read_into(dest, 1.0).status == "frame" and dest[0, 0, 0] == 10
        push(99, 0)
        result = cap.read_into(dest, 1.0)
        assert (result.status, result.index, result.pts_ns) == ("repeat", 1, 0) and dest[0, 0, 0] == 10
        push(20, Gst.SECOND // 30)
        assert cap.read_into(dest, 1.0).status == "frame" and dest[0, 0, 0] == 20


def test_pipeline_is_null_after_stop_exception_and_garbage() -> None:
    settings = SourceConfig(sensor_mode=(320, 240))
    dest = np.zeros((224, 224, 4), np.uint8)
    cap = GstCapture("test", PRE, settings)
    cap.start()
    pipeline = cap._pipeline
    read_frames(cap, dest, 1)
    cap.stop()
    assert state_of(pipeline) == Gst.State.NULL
    cap.stop()  # idempotent

    with pytest.raises(KeyError), GstCapture("test", PRE, settings) as cap:
        pipeline = cap._pipeline
        read_frames(cap, dest, 1)
        raise KeyError("boom")
    assert state_of(pipeline) == Gst.State.NULL

    cap = GstCapture("test", PRE, settings)
    cap.start()
    pipeline = cap._pipeline
    assert state_of(pipeline) in (Gst.State.PLAYING, Gst.State.PAUSED)
    del cap
    gc.collect()
    assert state_of(pipeline) == Gst.State.NULL


def test_read_into_checks_its_arguments() -> None:
    cap = GstCapture("test", PRE, SourceConfig())
    with pytest.raises(RuntimeError, match="before start"):
        cap.read_into(np.zeros((224, 224, 4), np.uint8), 0.1)
    with cap, pytest.raises(ValueError, match=r"uint8 array of shape \(224, 224, 4\)"):
        cap.read_into(np.zeros((224, 224, 3), np.uint8), 0.1)
