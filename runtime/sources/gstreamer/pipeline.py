"""GStreamer pipeline descriptions per capture source, and the checks and hints before one is built.

Sources (`--source` specs):
- `csi[:SENSOR_ID]`: `nvarguscamerasrc` -> `nvvidconv` (the Jetson's VIC converts and scales in hardware; the CPU
  never touches sensor-size pixels) -> RGBA `(S, S)`.
- `v4l2:/dev/videoN`: a USB/UVC camera (`v4l2src`) as raw, MJPEG or H.264 (`source.v4l2_format`, chosen from its
  caps at start: runtime/sources/gstreamer/v4l2.py); raw is scaled and converted on the CPU, MJPEG and H.264 are
  decoded like an RTP stream (NVDEC + VIC on a Jetson, `jpegdec`/`avdec_h264` and `videoscale` elsewhere).
- `file:PATH`: any video GStreamer decodes; clock-synced by default so a file behaves like a camera.
- `test`: `videotestsrc` (live, a moving ball) at the sensor mode and frame rate; needs no hardware.
- `rtsp://HOST[:PORT]/PATH`: an IP camera or RTSP server (`rtspsrc`, 100 ms jitter buffer, `decodebin`);
  `rtp://@:PORT[?codec=h264|h265|mjpeg]`: an RTP stream on a UDP port. Both decode and scale on the Jetson's NVDEC and
  VIC (`nvv4l2decoder`, `nvvidconv`) on a Jetson, in software (`avdec_*`, `jpegdec`, `videoscale`) elsewhere.
- `gst:DESCRIPTION`: the user's own source description (e.g. `rtspsrc ... ! decodebin`); the tail is appended. Live
  (GStreamer: no preroll) it is a camera, whose end of stream is a failure; non-live it ends like a file.

Every frame arrives as the `(S, S, C)` uint8 frame of `Preprocessing.frame_format`, the layout `prepare_frame` would
produce from the same RGB image. The resize is the scaler's (VIC or `videoscale`), not PIL's: camera frames are not
bit-identical to `prepare_frame`'s antialiased resize of the same picture, only close. How close is measured, not
assumed: `runtime --score --resize-path pipeline` pushes recorded episodes through these very tails (`scale_tail`,
runtime/sources/gstreamer/resize.py) and reports chunk[0]'s skew per method (runtime/skew.py); the methods are
settings (`source.resize_method` for videoscale, `source.vic_resize_method` for nvvidconv, `source.two_stage`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from runtime.config import NVVIDCONV_METHODS, SourceConfig
from runtime.errors import MobileVLAError
from runtime.host import is_jetson
from runtime.preprocess import FRAME_FORMATS, Preprocessing
from runtime.sources.gstreamer.v4l2 import V4l2Choice
from runtime.sources.spec import CaptureSpec, RtpSpec, RtspSpec, V4l2Spec, parse_capture

SINK_NAME = "mvla_capture_sink"
# nvvidconv's flip-method numbering (what the robot uses) -> videoflip's method for the CPU-side sources.
_VIDEOFLIP_METHODS = ("none", "counterclockwise", "rotate-180", "clockwise", "horizontal-flip", "upper-right-diagonal",
                      "vertical-flip", "upper-left-diagonal")


def _appsink(sync: bool, drop: bool) -> str:
    # max-buffers=1 + drop=true: the sink keeps only the newest frame (latest-frame semantics, bounded latency).
    # enable-last-sample=false: no extra buffer reference held by the sink between pulls.
    return (f"appsink drop={str(drop).lower()} max-buffers=1 sync={str(sync).lower()} emit-signals=false "
            f"enable-last-sample=false name={SINK_NAME}")


def _cpu_tail(pre: Preprocessing, settings: SourceConfig, size: int | None = None, flip_here: bool = True) -> str:
    """Scale first (cheaper than converting sensor-size pixels), then convert; flip the small frame. The scale method
    is `source.resize_method` (chosen by measured skew against the training resize: docs/runtime.md, "Train-serve
    skew")."""
    size = size or pre.image_size
    flipping = settings.flip_method and flip_here
    flip = f" ! videoflip method={_VIDEOFLIP_METHODS[settings.flip_method]}" if flipping else ""
    # No pixel-aspect-ratio in the caps: videoscale squashes to S x S as the training resize did (no letterbox).
    return (f"videoscale method={settings.resize_method} ! videoconvert{flip} ! "
            f"video/x-raw,width={size},height={size},format={pre.frame_format}")


TWO_STAGE_FACTOR = 2  # source.two_stage: the VIC scales to this many times S, videoscale does the last step


def scale_tail(pre: Preprocessing, settings: SourceConfig, hardware: bool, size: int | None = None) -> str:
    """Scale and convert to the `(S, S, C)` frame (or `size` x `size`): the VIC on a Jetson (`hardware`), else
    `videoscale`. The camera paths and the skew measurement (runtime/sources/gstreamer/resize.py) share it, so the
    measurement runs the elements the robot runs. `source.two_stage` (VIC only): the VIC downscales to 2·S, then
    `videoscale method=<source.resize_method>` (the training filter's match) does the last step on the CPU."""
    if hardware and settings.two_stage and size is None:
        return f"{_vic_tail(pre, settings, TWO_STAGE_FACTOR * pre.image_size)} ! {last_step_tail(pre, settings)}"
    return _vic_tail(pre, settings, size) if hardware else _cpu_tail(pre, settings, size)


def last_step_tail(pre: Preprocessing, settings: SourceConfig) -> str:
    """The two-stage path's CPU step: `videoscale` from the VIC's 2·S frame to S (already flipped by the VIC)."""
    return _cpu_tail(pre, settings, flip_here=False)


def sink_mode(spec: CaptureSpec, settings: SourceConfig) -> tuple[bool, bool]:
    """(sync, drop) of the appsink per source kind."""
    if spec.kind == "file":
        # Synced: played at the file's rate, stale frames dropped like a camera. Unsynced: every frame, as fast as the
        # caller reads (drop=false makes the decoder wait for the reader instead of skipping frames).
        return (True, True) if settings.file_sync else (False, False)
    return False, True  # live sources: frames are already real-time; waiting on the clock only adds latency


def _vic_tail(pre: Preprocessing, settings: SourceConfig, size: int | None = None) -> str:
    """The Jetson's VIC scales, flips and converts (from NVMM or system memory) to S x S RGBA, with the
    `interpolation-method` of `source.vic_resize_method` (nvvidconv's own default is Nearest: it aliases)."""
    size = size or pre.image_size
    method = NVVIDCONV_METHODS.index(settings.vic_resize_method)  # the enum's value: its nicks vary by L4T release
    tail = (f"nvvidconv interpolation-method={method} flip-method={settings.flip_method} ! "
            f"video/x-raw,width={size},height={size},format=RGBA")
    if pre.frame_format != "RGBA":
        # nvvidconv writes RGBA/BGRx only; the remaining conversion is at S x S, which costs the CPU ~nothing.
        tail += f" ! videoconvert ! video/x-raw,format={pre.frame_format}"
    return tail


# RTP per codec: the caps udpsrc announces and the depayloader. Per codec (RTP and V4L2 alike): the parser and the
# decoder (Jetson hardware / software); nvv4l2decoder takes JPEG only as whole parsed frames (jpegparse before it).
RTP_CAPS = {"h264": "encoding-name=H264,clock-rate=90000,payload=96",
            "h265": "encoding-name=H265,clock-rate=90000,payload=96",
            "mjpeg": "encoding-name=JPEG,clock-rate=90000,payload=26"}
RTP_DEPAY = {"h264": "rtph264depay", "h265": "rtph265depay", "mjpeg": "rtpjpegdepay"}
PARSERS = {"h264": "h264parse", "h265": "h265parse", "mjpeg": ""}
DECODERS = {"h264": ("nvv4l2decoder", "avdec_h264"), "h265": ("nvv4l2decoder", "avdec_h265"),
            "mjpeg": ("jpegparse ! nvv4l2decoder mjpeg=1", "jpegdec")}
RTSP_LATENCY_MS = 100  # rtspsrc's jitter buffer: its default (2 s) would put every frame 2 s behind


def decode_chain(codec: str, hardware: bool) -> str:
    """Parse and decode one codec's stream (`h264parse ! avdec_h264`, ...): the RTP and V4L2 paths share it."""
    return " ! ".join(filter(None, (PARSERS[codec], DECODERS[codec][0 if hardware else 1])))


def _v4l2_tail(choice: V4l2Choice, pre: Preprocessing, settings: SourceConfig, hardware: bool) -> str:
    """After `v4l2src`: the caps asked of the camera, the decoder, scaling. Raw is scaled and converted on the CPU on
    every host, as before compressed formats were chosen."""
    if choice.format == "raw":
        return f"{choice.caps} ! {_cpu_tail(pre, settings)}"
    return f"{choice.caps} ! {decode_chain(choice.format, hardware)} ! {scale_tail(pre, settings, hardware)}"


def _network_head(source: RtspSpec | RtpSpec, hardware: bool) -> str:
    if isinstance(source, RtspSpec):
        return f"rtspsrc location={source.url} latency={RTSP_LATENCY_MS} ! decodebin"
    address = source.host or "0.0.0.0"
    caps = f"application/x-rtp,media=video,{RTP_CAPS[source.codec]}"
    return (f"udpsrc address={address} port={source.port} caps=\"{caps}\" ! rtpjitterbuffer latency=50 ! "
            f"{RTP_DEPAY[source.codec]} ! {decode_chain(source.codec, hardware)}")


def pipeline_description(spec: str | CaptureSpec, pre: Preprocessing, settings: SourceConfig,
                         hardware: bool | None = None, v4l2: V4l2Choice | None = None) -> str:
    """The gst-launch-1.0 description of a capture spec (paste it after `gst-launch-1.0 -v` to debug a camera).
    `hardware`: decode and scale network streams and compressed V4L2 formats on the Jetson's NVDEC and VIC (default:
    on a Jetson). `v4l2`: the format chosen from the camera's caps (None: raw, whatever the camera negotiates)."""
    source = parse_capture(spec) if isinstance(spec, str) else spec
    if pre.frame_format not in FRAME_FORMATS:
        raise MobileVLAError(f"unknown frame_format {pre.frame_format!r}; expected one of {', '.join(FRAME_FORMATS)}")
    sink = _appsink(*sink_mode(source, settings))
    size, (width, height), fps = pre.image_size, settings.sensor_mode, settings.fps
    if source.kind == "csi":
        head = (f"nvarguscamerasrc sensor-id={source.arg} ! "
                f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1")
        return f"{head} ! {scale_tail(pre, settings, True)} ! {sink}"
    hardware = is_jetson() if hardware is None else hardware
    if isinstance(source, V4l2Spec) and v4l2 is not None:
        return f"v4l2src device={source.device} ! {_v4l2_tail(v4l2, pre, settings, hardware)} ! {sink}"
    if isinstance(source, RtspSpec | RtpSpec):
        return f"{_network_head(source, hardware)} ! {scale_tail(pre, settings, hardware)} ! {sink}"
    if source.kind == "v4l2":
        head = f"v4l2src device={source.arg}"
    elif source.kind == "file":
        head = f"uridecodebin uri={Path(source.arg).expanduser().resolve().as_uri()}"
    elif source.kind == "test":
        # Generated at S x S, like the CSI path whose VIC scaling leaves the CPU nothing to do at sensor size.
        head = f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={size},height={size},framerate={fps}/1"
    else:
        head = source.arg
    return f"{head} ! {_cpu_tail(pre, settings)} ! {sink}"


_KIND_ELEMENTS = {
    "csi": ("nvarguscamerasrc", "nvvidconv"),
    "v4l2": ("v4l2src", "videoscale", "videoconvert"),
    "file": ("uridecodebin", "videoscale", "videoconvert"),
    "test": ("videotestsrc", "videoscale", "videoconvert"),
    "gst": ("videoscale", "videoconvert"),
    "rtsp": ("rtspsrc", "decodebin"),
    "rtp": ("udpsrc", "rtpjitterbuffer"),
}
_ELEMENT_PACKAGES = {
    "v4l2src": "gstreamer1.0-plugins-good",
    "videoflip": "gstreamer1.0-plugins-good",
    "rtspsrc": "gstreamer1.0-plugins-good",
    "rtpjitterbuffer": "gstreamer1.0-plugins-good",
    "rtph264depay": "gstreamer1.0-plugins-good",
    "rtph265depay": "gstreamer1.0-plugins-good",
    "rtpjpegdepay": "gstreamer1.0-plugins-good",
    "jpegdec": "gstreamer1.0-plugins-good",
    "h264parse": "gstreamer1.0-plugins-bad",
    "jpegparse": "gstreamer1.0-plugins-bad",
    "h265parse": "gstreamer1.0-plugins-bad",
    "avdec_h264": "gstreamer1.0-libav",
    "avdec_h265": "gstreamer1.0-libav",
}


def failure_hint(spec: CaptureSpec) -> str:
    if spec.kind == "csi":
        return (
            "Likely causes: the Argus daemon is wedged after an unclean stop (restart nvargus-daemon: sudo systemctl "
            f"restart nvargus-daemon), the camera ribbon cable is loose, or no sensor is connected as sensor-id "
            f"{spec.arg} (check the cable and the sensor-id; list sensors with: ls /dev/video*)."
        )
    if spec.kind == "v4l2":
        return (
            f"Likely causes: the camera was unplugged or re-enumerated under another number than {spec.arg} "
            "(v4l2-ctl --list-devices), or this user may not open it (permissions: add the user to the video group, "
            "sudo usermod -aG video $USER, and log in again)."
        )
    if spec.kind == "file":
        return (
            f"Likely cause: {spec.arg} is unreadable or not a video GStreamer can decode (try: gst-launch-1.0 "
            "playbin uri=file:///absolute/path; more codecs: gstreamer1.0-plugins-bad, gstreamer1.0-libav)."
        )
    if spec.kind == "test":
        return "videotestsrc does not fail on a working GStreamer install: reinstall gstreamer1.0-plugins-base."
    if isinstance(spec, RtspSpec):
        return (f"Likely causes: the camera or server at {spec.url} is unreachable, refuses the path or wants "
                "credentials (rtsp://user:password@host/path), or streams a codec without a decoder here; check it "
                f"alone with: gst-launch-1.0 -v rtspsrc location={spec.url} ! decodebin ! fakesink")
    if isinstance(spec, RtpSpec):
        return (f"Likely causes: nothing is sending RTP to port {spec.port} (a firewall, or the sender's host/port), "
                f"or the stream is not {spec.codec} (set ?codec=h264|h265|mjpeg to what the sender encodes).")
    return (
        f"Likely cause: your GStreamer description {spec.arg!r}; check it alone with: gst-launch-1.0 -v "
        f"{spec.arg} ! videoconvert ! fakesink"
    )


def check_source(spec: CaptureSpec) -> None:
    """Catch bad specs before building a pipeline, with messages that say how to fix them."""
    if spec.kind == "file":
        path = Path(spec.arg).expanduser()
        if not path.is_file():
            raise MobileVLAError(f"capture source {spec.label!r}: no such file {path}")
        if not os.access(path, os.R_OK):
            raise MobileVLAError(f"capture source {spec.label!r}: {path} is not readable by this user")
    elif spec.kind == "v4l2":
        device = Path(spec.arg)
        if not device.exists():
            raise MobileVLAError(
                f"capture source {spec.label!r}: no such device {device}; list cameras with v4l2-ctl --list-devices "
                "or ls /dev/video*"
            )
        if not stat.S_ISCHR(device.stat().st_mode):
            raise MobileVLAError(f"capture source {spec.label!r}: {device} is not a video device (not a char device)")
        if not os.access(device, os.R_OK | os.W_OK):
            raise MobileVLAError(
                f"capture source {spec.label!r}: permission denied on {device}; add the user to the video group "
                "(sudo usermod -aG video $USER) and log in again"
            )


def check_elements(spec: CaptureSpec, settings: SourceConfig, gst: Any, hardware: bool = False,
                   v4l2: V4l2Choice | None = None) -> None:
    wanted = [*_KIND_ELEMENTS[spec.kind], "appsink"]
    codec = spec.codec if isinstance(spec, RtpSpec) else v4l2.format if v4l2 is not None else "raw"
    if isinstance(spec, RtpSpec):
        wanted.append(RTP_DEPAY[spec.codec])
    if codec != "raw":
        wanted += [element.split()[0] for element in decode_chain(codec, hardware).split(" ! ")]
    if hardware and (isinstance(spec, RtspSpec | RtpSpec) or codec != "raw"):
        wanted.append("nvvidconv")
    elif settings.flip_method and spec.kind != "csi":
        wanted.append("videoflip")
    if settings.two_stage and (spec.kind == "csi" or hardware):
        wanted += ["videoscale", "videoconvert"]  # the two-stage path's CPU step after the VIC
    for name in wanted:
        if gst.ElementFactory.find(name) is not None:
            continue
        if name in ("nvarguscamerasrc", "nvvidconv"):
            raise MobileVLAError(
                f"{name} is not installed: csi capture needs a Jetson with JetPack's GStreamer plugins "
                "(nvidia-l4t-gstreamer); elsewhere use v4l2:/dev/videoN, file:PATH or test"
            )
        if name in ("nvv4l2decoder", "nvvidconv"):
            raise MobileVLAError(f"{name} is not installed: hardware decoding needs JetPack's GStreamer plugins "
                                 f"(nvidia-l4t-gstreamer)")
        package = _ELEMENT_PACKAGES.get(name, "gstreamer1.0-plugins-base")
        raise MobileVLAError(
            f"GStreamer element {name} is not installed (needed by capture source {spec.label!r}): "
            f"sudo apt install {package}"
        )
