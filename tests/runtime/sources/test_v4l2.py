"""V4L2 cameras as raw, MJPEG or H.264: the format chooser on planted caps, the pipeline text per format and host, a
real v4l2src probe that fails, and the MJPEG and H.264 decode tails run for real on GStreamer-encoded streams (no
/dev/video device here: what is proven is everything after v4l2src)."""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from runtime.cli import build_parser, camera_flags
from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.sources.gstreamer.pipeline import check_elements, decode_chain, pipeline_description
from runtime.sources.gstreamer.v4l2 import Probe, V4l2Choice, choose_for, choose_format, parse_caps
from runtime.sources.spec import V4l2Spec

PRE = Preprocessing()  # 224, RGBA
HD = (1280, 720)
# Caps as GStreamer writes them (Gst.Structure.to_string()), shaped like real UVC cameras'.
RAW_ONLY = [
    "video/x-raw, format=(string)YUY2, width=(int)640, height=(int)480, pixel-aspect-ratio=(fraction)1/1, "
    "framerate=(fraction){ 30/1, 15/1 }, colorimetry=(string){ 2:4:7:1 }, interlace-mode=(string)progressive;",
    "video/x-raw, format=(string)YUY2, width=(int)1280, height=(int)720, framerate=(fraction){ 10/1, 5/1 };",
]
FAST_MJPEG = [  # raw reaches 5 fps at 720p; MJPEG 30
    "video/x-raw, format=(string)YUY2, width=(int)1280, height=(int)720, framerate=(fraction)5/1",
    "video/x-raw, format=(string)YUY2, width=(int)640, height=(int)480, framerate=(fraction)30/1",
    "image/jpeg, width=(int)1920, height=(int)1080, framerate=(fraction){ 30/1, 15/1 }",
    "image/jpeg, width=(int)1280, height=(int)720, framerate=(fraction){ 60/1, 30/1, 15/1 }",
]
H264_ONLY = [
    "video/x-h264, stream-format=(string)byte-stream, alignment=(string)au, width=(int)1920, height=(int)1080, "
    "framerate=(fraction)30/1",
    "video/x-h264, stream-format=(string)byte-stream, alignment=(string)au, width=(int)1280, height=(int)720, "
    "framerate=(fraction){ 30/1, 15/1 }",
]


def choose(caps: list[str], wanted: str = "auto", size: tuple[int, int] = HD, fps: int = 30) -> V4l2Choice:
    return choose_format(parse_caps(caps), wanted, size, fps, "v4l2:/dev/video0")


# --- reading caps and choosing ----------------------------------------------------------------------------------


def test_caps_are_read_with_their_lists_ranges_and_types() -> None:
    raw, slow = parse_caps(RAW_ONLY)
    assert (raw.format, raw.pixel_formats, raw.widths, raw.heights) == ("raw", ("YUY2",), ((640, 640),), ((480, 480),))
    assert raw.rates == ((Fraction(30), Fraction(30)), (Fraction(15), Fraction(15)))
    assert slow.max_rate == 10 and slow.describe() == "raw (YUY2) 1280x720 up to 10 fps"
    (stepwise,) = parse_caps(["video/x-raw, format=(string){ YUY2, NV12 }, width=(int)[ 16, 1920, 8 ], "
                              "height=(int)[ 16, 1080 ], framerate=(fraction)[ 1/1, 60/1 ]"])
    assert stepwise.pixel_formats == ("YUY2", "NV12") and stepwise.widths == ((16, 1920),)
    assert stepwise.nearest_size(1280, 720) == (1280, 720) and stepwise.rate_for(30) == 30
    assert stepwise.nearest_size(4000, 8) == (1920, 16)
    whole = parse_caps(["image/jpeg, width=(int)640, height=(int)480, framerate=(fraction)0/1; video/x-bayer, "
                        "width=(int)640, height=(int)480"])
    assert [(m.format, m.rates) for m in whole] == [("mjpeg", ()), ("video/x-bayer", ())]  # 0/1: variable rate


def test_raw_only_camera_is_raw_at_the_wanted_mode_or_the_nearest() -> None:
    vga = choose(RAW_ONLY, size=(640, 480))
    assert (vga.format, vga.caps) == ("raw", "video/x-raw,width=640,height=480,framerate=30/1")
    assert vga.reason == "auto: raw reaches 640x480 at 30 fps (nothing to decode)"
    hd = choose(RAW_ONLY)  # 720p only at 10 fps, and nothing else offered: raw at the size asked, at its best rate
    assert hd.caps == "video/x-raw,width=1280,height=720,framerate=10/1"
    assert hd.reason == ("auto: no raw, mjpeg or h264 mode reaches 1280x720 at 30 fps; raw is the first the camera "
                         "offers; nearest it offers to 1280x720 at 30 fps is 1280x720 at 10 fps")
    odd = choose(RAW_ONLY, size=(800, 600), fps=15)
    assert odd.caps == "video/x-raw,width=640,height=480,framerate=15/1"  # 640x480 is nearer 800x600 than 720p


def test_fast_mjpeg_camera_is_mjpeg_where_raw_is_too_slow() -> None:
    hd = choose(FAST_MJPEG)
    assert (hd.format, hd.caps) == ("mjpeg", "image/jpeg,width=1280,height=720,framerate=30/1")
    assert hd.reason == "auto: no raw mode reaches 1280x720 at 30 fps; mjpeg does"
    assert choose(FAST_MJPEG, fps=5).format == "raw"  # raw does reach 720p at 5 fps
    assert choose(FAST_MJPEG, size=(640, 480)).caps == "video/x-raw,width=640,height=480,framerate=30/1"
    assert choose(FAST_MJPEG, fps=45).caps == "image/jpeg,width=1280,height=720,framerate=60/1"  # lowest above 45
    forced = choose(FAST_MJPEG, "raw")
    assert forced.caps == "video/x-raw,width=1280,height=720,framerate=5/1"
    assert forced.reason.startswith("source.v4l2_format: raw; nearest it offers to 1280x720 at 30 fps is 1280x720")


def test_h264_only_camera_is_h264() -> None:
    hd = choose(H264_ONLY)
    assert (hd.format, hd.caps) == ("h264", "video/x-h264,width=1280,height=720,framerate=30/1")
    assert hd.reason == "auto: no raw or mjpeg mode reaches 1280x720 at 30 fps; h264 does"
    assert choose(H264_ONLY, size=(1920, 1080)).caps == "video/x-h264,width=1920,height=1080,framerate=30/1"


def test_ntsc_rates_count_as_their_nominal_rate() -> None:
    ntsc = choose(["video/x-raw, format=(string)NV12, width=(int)1280, height=(int)720, "
                   "framerate=(fraction)30000/1001", *FAST_MJPEG[2:]])
    assert ntsc.caps == "video/x-raw,width=1280,height=720,framerate=30000/1001"


def test_forced_format_the_camera_lacks_says_what_it_offers() -> None:
    with pytest.raises(MobileVLAError) as error:
        choose(RAW_ONLY, "mjpeg")
    assert str(error.value) == (
        "capture source 'v4l2:/dev/video0': source.v4l2_format is mjpeg, but the camera offers raw (YUY2) 640x480 "
        "up to 30 fps, raw (YUY2) 1280x720 up to 10 fps; set source.v4l2_format (or --input-codec) to auto or to one "
        "it offers: raw")
    with pytest.raises(MobileVLAError, match=r"offers raw \(YUY2\) 1280x720 up to 5 fps, .* mjpeg 1280x720 up to 60 "
                                             r"fps; set source.v4l2_format .* offers: raw, mjpeg$"):
        choose(FAST_MJPEG, "h264")
    with pytest.raises(MobileVLAError, match=r"offers video/x-bayer \(rggb\) 640x480, none of raw .* gst:v4l2src"):
        choose(["video/x-bayer, format=(string)rggb, width=(int)640, height=(int)480"])


def test_the_choice_and_a_failed_probe_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    spec = V4l2Spec("/dev/video0", "v4l2:/dev/video0")
    caplog.set_level(logging.INFO, logger="runtime.capture")
    choice = choose_for(spec, SourceConfig(), Probe(tuple(FAST_MJPEG)))
    assert choice.format == "mjpeg"
    assert ("capture v4l2:/dev/video0: capturing mjpeg as image/jpeg,width=1280,height=720,framerate=30/1 (auto: no "
            "raw mode reaches 1280x720 at 30 fps; mjpeg does; the camera offers raw (YUY2) 1280x720") in caplog.text
    caplog.clear()
    failed = choose_for(spec, SourceConfig(), Probe((), "Device busy"))
    assert (failed.format, failed.caps, failed.size) == ("raw", "video/x-raw", None)
    assert caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].getMessage() == (
        "capture v4l2:/dev/video0: probing the camera's formats failed (Device busy); capturing raw at whatever size "
        "and rate it negotiates (source.v4l2_format: auto)")
    forced = choose_for(spec, SourceConfig(v4l2_format="h264"), Probe((), "Device busy"))
    assert forced.caps == "video/x-h264"  # the user's format stands; only size and rate are left to the camera
    garbled = choose_for(spec, SourceConfig(), Probe(("video/x-raw, width=(int)wide, height=(int)480",)))
    assert garbled.format == "raw" and "its caps could not be read" in garbled.reason


def test_setting_and_flag() -> None:
    assert SourceConfig().v4l2_format == "auto"
    with pytest.raises(MobileVLAError, match=r"source.v4l2_format.*'yuyv'.*auto \| raw \| mjpeg \| h264"):
        SourceConfig(v4l2_format="yuyv")
    args = build_parser().parse_args(["--source", "/dev/video1", "--input-codec", "mjpeg"])
    assert camera_flags(args, SourceConfig(spec="/dev/video1"))["v4l2_format"] == "mjpeg"
    with pytest.raises(MobileVLAError, match=r"--input-codec h264: applies to v4l2 cameras .* takes \?codec="):
        camera_flags(build_parser().parse_args(["--input-codec", "h264"]), SourceConfig(spec="rtp://@:5000"))


# --- pipeline text -----------------------------------------------------------------------------------------------

MJPEG = V4l2Choice("mjpeg", HD, Fraction(30), "test")
H264 = V4l2Choice("h264", HD, Fraction(30), "test")
RAW = V4l2Choice("raw", (640, 480), Fraction(30), "test")
SINK = "appsink drop=true max-buffers=1 sync=false"


def test_pipeline_text_per_format_on_and_off_a_jetson(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SourceConfig(flip_method=2)
    cpu = ("videoscale method=bilinear2 ! videoconvert ! videoflip method=rotate-180 ! "
           "video/x-raw,width=224,height=224,format=RGBA")
    vic = "nvvidconv interpolation-method=5 flip-method=2 ! video/x-raw,width=224,height=224,format=RGBA"
    expected = {
        (RAW, False): f"video/x-raw,width=640,height=480,framerate=30/1 ! {cpu}",
        (RAW, True): f"video/x-raw,width=640,height=480,framerate=30/1 ! {cpu}",  # raw: the CPU path on every host
        (MJPEG, False): f"image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec ! {cpu}",
        (MJPEG, True): f"image/jpeg,width=1280,height=720,framerate=30/1 ! jpegparse ! nvv4l2decoder mjpeg=1 ! {vic}",
        (H264, False): f"video/x-h264,width=1280,height=720,framerate=30/1 ! h264parse ! avdec_h264 ! {cpu}",
        (H264, True): f"video/x-h264,width=1280,height=720,framerate=30/1 ! h264parse ! nvv4l2decoder ! {vic}",
    }
    for (choice, jetson), middle in expected.items():
        monkeypatch.setattr("runtime.sources.gstreamer.pipeline.is_jetson", lambda jetson=jetson: jetson)
        text = pipeline_description("v4l2:///dev/video1", PRE, settings, v4l2=choice)
        assert text.startswith(f"v4l2src device=/dev/video1 ! {middle} ! {SINK} "), (choice.format, jetson, text)
    # the RTP path decodes with the same chain
    rtp = pipeline_description("rtp://@:5000?codec=mjpeg", PRE, SourceConfig(), hardware=True)
    assert f"rtpjpegdepay ! {decode_chain('mjpeg', True)} ! nvvidconv" in rtp
    assert pipeline_description("/dev/video1", PRE, settings).startswith(f"v4l2src device=/dev/video1 ! {cpu} ! ")


def _gst() -> Any:
    pytest.importorskip("gi", reason="needs PyGObject (apt python3-gi, or pip install 'PyGObject<3.51')")
    from runtime.sources.gstreamer.buffer import gst_modules

    try:
        return gst_modules().Gst
    except MobileVLAError as exc:
        pytest.skip(f"GStreamer through PyGObject is unavailable: {exc}")


def needs(gst: Any, elements: dict[str, str]) -> None:
    missing = [f"{name} ({package})" for name, package in elements.items() if gst.ElementFactory.find(name) is None]
    if missing:
        pytest.skip(f"GStreamer elements missing: {', '.join(missing)}")


def test_hardware_decode_elements_are_checked() -> None:
    gst = _gst()
    needs(gst, {"v4l2src": "gstreamer1.0-plugins-good", "jpegparse": "gstreamer1.0-plugins-bad"})
    if gst.ElementFactory.find("nvv4l2decoder") is not None:
        pytest.skip("this machine has JetPack's decoders")
    spec = V4l2Spec("/dev/video0", "v4l2:/dev/video0")
    check_elements(spec, SourceConfig(), gst, hardware=True, v4l2=RAW)  # raw needs no decoder
    with pytest.raises(MobileVLAError, match=r"nvv4l2decoder is not installed: hardware decoding needs JetPack"):
        check_elements(spec, SourceConfig(), gst, hardware=True, v4l2=MJPEG)


def test_a_device_that_is_no_camera_fails_the_probe_and_the_start(caplog: pytest.LogCaptureFixture) -> None:
    gst = _gst()
    needs(gst, {"v4l2src": "gstreamer1.0-plugins-good"})
    from runtime.sources.gstreamer.capture import GstCapture
    from runtime.sources.gstreamer.v4l2 import probe_caps

    probe = probe_caps("/dev/null", gst)  # a character device v4l2src opens and cannot query
    assert probe.caps == () and probe.error is not None and "/dev/null" in probe.error
    caplog.set_level(logging.INFO, logger="runtime.capture")
    with pytest.raises(MobileVLAError, match=r"capture source 'v4l2:/dev/null' did not start: .*unplugged"):
        GstCapture("v4l2:/dev/null", PRE, SourceConfig()).start()
    assert "probing the camera's formats failed" in caplog.text and "capturing raw" in caplog.text


# --- the decode tails, for real ----------------------------------------------------------------------------------

ENCODERS = {
    "mjpeg": ("jpegenc quality=95", {"jpegenc": "gstreamer1.0-plugins-good", "jpegdec": "gstreamer1.0-plugins-good"}),
    "h264": ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! "
             "capsfilter caps=video/x-h264,stream-format=byte-stream",  # what cameras send
             {"x264enc": "gstreamer1.0-plugins-ugly", "h264parse": "gstreamer1.0-plugins-bad",
              "avdec_h264": "gstreamer1.0-libav"}),
}
SOLID_RGB = (200, 40, 90)


@pytest.mark.parametrize("codec", sorted(ENCODERS))
def test_compressed_stream_decodes_to_frames_through_the_v4l2_tail(codec: str) -> None:
    """A camera's stream stands in as videotestsrc encoded at 320x240@30: the text after `v4l2src` is the v4l2
    path's own, and GstCapture delivers 224x224 RGBA frames of the encoded colour."""
    gst = _gst()
    encoder, elements = ENCODERS[codec]
    needs(gst, {"videotestsrc": "gstreamer1.0-plugins-base", **elements})
    from runtime.sources.gstreamer.capture import GstCapture

    settings = SourceConfig(sensor_mode=(320, 240), fps=30)
    choice = choose_format(parse_caps([f"{'image/jpeg' if codec == 'mjpeg' else 'video/x-h264'}, width=(int)320, "
                                       "height=(int)240, framerate=(fraction)30/1"]), "auto", (320, 240), 30, "cam")
    assert choice.format == codec
    v4l2 = pipeline_description("v4l2:/dev/video0", PRE, settings, hardware=False, v4l2=choice)
    argb = 0xFF000000 | SOLID_RGB[0] << 16 | SOLID_RGB[1] << 8 | SOLID_RGB[2]
    camera = (f"videotestsrc is-live=true pattern=solid-color foreground-color={argb} ! "
              f"video/x-raw,format=RGB,width=320,height=240,framerate=30/1 ! videoconvert ! {encoder}")
    spec = f"gst:{camera} ! {choice.caps} ! {decode_chain(codec, False)}"
    dest = np.zeros((224, 224, 4), np.uint8)
    with GstCapture(spec, PRE, settings) as cap:
        assert cap.description == v4l2.replace("v4l2src device=/dev/video0", camera, 1)
        results = [cap.read_into(dest, 5.0) for _ in range(3)]
    assert [r.status for r in results] == ["frame"] * 3 and [r.index for r in results] == [1, 2, 3]
    assert np.abs(dest[..., :3].astype(int) - SOLID_RGB).max() <= 6  # lossy codecs: within a few levels
    assert (dest[..., 3] == 255).all()
