"""H.264 from a file and from an RTSP server on 127.0.0.1, through the runtime's own capture (GstCapture): real
encoders, real containers, a real GstRtspServer; nothing leaves the loopback. Each test skips, naming the package,
when an element it needs is missing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gi", reason="camera capture needs PyGObject (pip install 'PyGObject<3.51' or apt python3-gi)")

from runtime.bundle import load_bundle
from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.sources.dispatch import open_source
from runtime.sources.gstreamer.buffer import gst_modules
from runtime.sources.gstreamer.capture import GstCapture

SOLID_RGB = (200, 40, 90)
ARGB = 0xFF000000 | SOLID_RGB[0] << 16 | SOLID_RGB[1] << 8 | SOLID_RGB[2]
H264 = {"x264enc": "gstreamer1.0-plugins-ugly", "h264parse": "gstreamer1.0-plugins-bad",
        "avdec_h264": "gstreamer1.0-libav", "videotestsrc": "gstreamer1.0-plugins-base"}


def gstreamer(elements: dict[str, str]) -> Any:
    try:
        gst = gst_modules().Gst
    except MobileVLAError as exc:
        pytest.skip(f"GStreamer through PyGObject is unavailable: {exc}")
    missing = [f"{name} ({package})" for name, package in elements.items() if gst.ElementFactory.find(name) is None]
    if missing:
        pytest.skip(f"GStreamer elements missing: {', '.join(missing)}")
    return gst


def run_to_eos(gst: Any, description: str) -> None:
    pipeline = gst.parse_launch(description)
    pipeline.set_state(gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(10 * gst.SECOND, gst.MessageType.EOS | gst.MessageType.ERROR)
    pipeline.set_state(gst.State.NULL)
    assert message is not None and message.type == gst.MessageType.EOS, "encoding the test video failed"


CONTAINERS = {"mp4": ("mp4mux", "qtdemux"), "mkv": ("matroskamux", "matroskademux")}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_h264_file_delivers_every_frame_then_ends(tmp_path: Path, container: str) -> None:
    muxer, demuxer = CONTAINERS[container]
    gst = gstreamer({**H264, muxer: "gstreamer1.0-plugins-good", demuxer: "gstreamer1.0-plugins-good"})
    path = tmp_path / f"clip.{container}"
    run_to_eos(gst, f"videotestsrc num-buffers=12 pattern=solid-color foreground-color={ARGB} ! "
                    "video/x-raw,format=RGB,width=320,height=240,framerate=30/1 ! videoconvert ! "
                    f"x264enc speed-preset=ultrafast ! h264parse ! {muxer} ! filesink location=\"{path}\"")
    dest = np.zeros((224, 224, 4), np.uint8)
    with GstCapture(f"file://{path}", Preprocessing(), SourceConfig(file_sync=False)) as cap:
        results = [cap.read_into(dest, 5.0) for _ in range(13)]
    assert [r.status for r in results] == ["frame"] * 12 + ["end"]
    assert np.abs(dest[..., :3].astype(int) - SOLID_RGB).max() <= 6 and (dest[..., 3] == 255).all()


@contextmanager
def rtsp_server(gst: Any, launch: str) -> Iterator[str]:
    """A GstRtspServer on 127.0.0.1 (a free port) serving `launch` at /test, over TCP only (RTP interleaved on the
    RTSP connection: no UDP ports, no multicast); its main loop runs on a thread of its own."""
    import gi

    try:
        gi.require_version("GstRtspServer", "1.0")
        gi.require_version("GstRtsp", "1.0")
        from gi.repository import GLib, GstRtsp, GstRtspServer
    except (ImportError, ValueError) as exc:
        pytest.skip(f"the RTSP server library is missing ({exc}): apt install gir1.2-gst-rtsp-server-1.0")
    server = GstRtspServer.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service("0")  # the kernel picks a free port; get_bound_port says which
    factory = GstRtspServer.RTSPMediaFactory.new()
    factory.set_launch(f"( {launch} )")
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    server.get_mount_points().add_factory("/test", factory)
    context = GLib.MainContext.new()
    source = server.create_source(None)
    source.attach(context)
    loop = GLib.MainLoop.new(context, False)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield f"rtsp://127.0.0.1:{server.get_bound_port()}/test"
    finally:
        loop.quit()
        thread.join(5.0)
        source.destroy()


def test_rtsp_server_on_loopback_delivers_frames_of_the_bundle_size(demo_bundle: Path) -> None:
    gst = gstreamer({**H264, "rtspsrc": "gstreamer1.0-plugins-good", "rtph264pay": "gstreamer1.0-plugins-good",
                     "rtph264depay": "gstreamer1.0-plugins-good"})
    pre = load_bundle(demo_bundle, verify_hashes=False).manifest.preprocessing
    launch = (f"videotestsrc is-live=true pattern=solid-color foreground-color={ARGB} ! "
              "video/x-raw,format=RGB,width=320,height=240,framerate=30/1 ! videoconvert ! "
              "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96")
    with rtsp_server(gst, launch) as url:
        source = open_source(SourceConfig(spec=url), pre)
        assert isinstance(source, GstCapture) and source.description.startswith(f"rtspsrc location={url} ")
        dest = np.zeros((pre.image_size, pre.image_size, pre.channels), np.uint8)
        source.start()
        try:
            results = [source.read_into(dest, 5.0) for _ in range(3)]
        finally:
            source.stop()
    assert [r.status for r in results] == ["frame"] * 3 and [r.index for r in results] == [1, 2, 3]
    assert dest.shape == (224, 224, 4) and pre.frame_format == "RGBA"
    assert np.abs(dest[..., :3].astype(int) - SOLID_RGB).max() <= 6
