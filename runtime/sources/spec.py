"""`--source` specs, parsed once into a small dataclass per kind (what `open_source` dispatches on).

- `csi[:SENSOR_ID]`, `v4l2:/dev/videoN`, `file:PATH`, `rtsp://…`, `rtp://…`, `test`, `gst:DESCRIPTION`: GStreamer
  captures (runtime/sources/gstreamer/), also in jetson-utils' spellings (`csi://0`, `v4l2:///dev/video0`,
  `/dev/video0`, `file://video.mp4`);
- `synthetic` (a generated scene) and `h5:PATH` (recorded episodes): replays (runtime/sources/replay.py);
- `dds:TOPIC`: a ROS 2 image topic (sensor_msgs/Image, or CompressedImage when TOPIC ends in `/compressed`),
  through Cyclone DDS (runtime/sources/topic.py).

Every spec has `kind`, `arg` (sensor id, device, path or description; "" where there is none) and `label` (the spec
as the user wrote it, for messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from runtime.errors import MobileVLAError

SOURCE_FORMS = ("`csi[:SENSOR_ID]` (or `csi://N`), `v4l2:/dev/videoN` (or `v4l2:///dev/videoN`, `/dev/videoN`), "
                "`file:PATH` (or `file://PATH`), `rtsp://HOST[:PORT]/PATH`, `rtp://@:PORT[?codec=h264|h265|mjpeg]`, "
                "`test`, `gst:DESCRIPTION`, `dds:IMAGE_TOPIC` (a ROS 2 image topic), `synthetic` or `h5:PATH`")
CAPTURE_FORMS = ("csi[:SENSOR_ID] (csi://N), v4l2:/dev/videoN (v4l2:///dev/videoN, /dev/videoN), file:PATH "
                 "(file://PATH), rtsp://HOST[:PORT]/PATH, rtp://@:PORT[?codec=...], test or gst:DESCRIPTION")
RTP_CODECS = ("h264", "h265", "mjpeg")
# jetson-utils' URI spellings beside this project's own (docs/runtime.md, "Sources")
CAPTURE_PREFIXES = ("csi:", "v4l2:", "file:", "gst:", "rtsp://", "rtsps://", "rtp://", "/dev/video")


@dataclass(frozen=True)
class CsiSpec:
    kind: ClassVar[str] = "csi"
    sensor_id: int
    label: str

    @property
    def arg(self) -> str:
        return str(self.sensor_id)


@dataclass(frozen=True)
class V4l2Spec:
    kind: ClassVar[str] = "v4l2"
    device: str
    label: str

    @property
    def arg(self) -> str:
        return self.device


@dataclass(frozen=True)
class FileSpec:
    kind: ClassVar[str] = "file"
    path: str
    label: str

    @property
    def arg(self) -> str:
        return self.path


@dataclass(frozen=True)
class TestSpec:
    kind: ClassVar[str] = "test"
    __test__: ClassVar[bool] = False  # not a pytest test class
    label: str = "test"

    @property
    def arg(self) -> str:
        return ""


@dataclass(frozen=True)
class GstSpec:
    kind: ClassVar[str] = "gst"
    description: str
    label: str

    @property
    def arg(self) -> str:
        return self.description


@dataclass(frozen=True)
class SyntheticSpec:
    kind: ClassVar[str] = "synthetic"
    label: str = "synthetic"

    @property
    def arg(self) -> str:
        return ""


@dataclass(frozen=True)
class H5Spec:
    kind: ClassVar[str] = "h5"
    path: Path
    label: str

    @property
    def arg(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class RtspSpec:
    kind: ClassVar[str] = "rtsp"
    url: str
    label: str

    @property
    def arg(self) -> str:
        return self.url


@dataclass(frozen=True)
class RtpSpec:
    """An RTP stream received on UDP `port` (`host` "" for every interface, jetson-utils' `rtp://@:PORT`)."""

    kind: ClassVar[str] = "rtp"
    host: str
    port: int
    codec: str  # one of RTP_CODECS
    label: str

    @property
    def arg(self) -> str:
        return f"{self.host or '@'}:{self.port}"


@dataclass(frozen=True)
class TopicSpec:
    """A ROS 2 image topic: sensor_msgs/Image, or CompressedImage (`compressed`, image_transport's `/compressed`)."""

    kind: ClassVar[str] = "topic"
    topic: str
    compressed: bool
    label: str

    @property
    def arg(self) -> str:
        return self.topic


CaptureSpec = CsiSpec | V4l2Spec | FileSpec | TestSpec | GstSpec | RtspSpec | RtpSpec
ReplaySpec = SyntheticSpec | H5Spec
SourceSpec = CaptureSpec | ReplaySpec | TopicSpec


def _after(spec: str, prefix: str) -> str:
    arg = spec[len(prefix) :].strip()
    if not arg:
        raise MobileVLAError(f"bad capture source {spec!r}: nothing after `{prefix}`")
    return arg


def parse_source(spec: str) -> SourceSpec:
    """The typed spec of a `--source` string, or MobileVLAError naming the accepted forms."""
    if spec == "synthetic":
        return SyntheticSpec()
    if spec.startswith("h5:"):
        return H5Spec(Path(spec[3:]), spec)
    if spec.startswith("dds:"):
        return parse_topic(spec)
    if spec in ("csi", "test") or spec.startswith(CAPTURE_PREFIXES):
        return parse_capture(spec)
    raise MobileVLAError(f"unknown source {spec!r}; expected {SOURCE_FORMS}")


def parse_topic(spec: str) -> TopicSpec:
    """`dds:TOPIC[?compressed]`; a topic ending in `/compressed` is a CompressedImage topic (image_transport)."""
    topic, _, query = _after(spec, "dds:").partition("?")
    if query not in ("", "compressed") or not topic:
        raise MobileVLAError(f"bad source {spec!r}: expected dds:TOPIC or dds:TOPIC?compressed, e.g. "
                             f"dds:/camera/image_raw or dds:/camera/image_raw/compressed")
    return TopicSpec(topic, query == "compressed" or topic.endswith("/compressed"), spec)


def parse_rtp(spec: str) -> RtpSpec:
    """`rtp://@:PORT` (every interface) or `rtp://HOST:PORT`, with `?codec=h264|h265|mjpeg` (default h264)."""
    address, _, query = spec[len("rtp://") :].partition("?")
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise MobileVLAError(f"bad capture source {spec!r}: expected rtp://@:PORT or rtp://HOST:PORT with a port in "
                             f"1-65535, e.g. rtp://@:5000")
    codec = "h264"
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key != "codec" or value not in RTP_CODECS:
            raise MobileVLAError(f"bad capture source {spec!r}: {item!r} is not a setting of an rtp:// source; "
                                 f"expected codec={'|'.join(RTP_CODECS)}")
        codec = value
    return RtpSpec("" if host in ("@", "") else host, int(port), codec, spec)


def parse_capture(spec: str) -> CaptureSpec:
    if spec == "test":
        return TestSpec()
    if spec.startswith(("rtsp://", "rtsps://")):
        if len(spec.partition("://")[2]) == 0:
            raise MobileVLAError(f"bad capture source {spec!r}: nothing after `rtsp://`")
        return RtspSpec(spec, spec)
    if spec.startswith("rtp://"):
        return parse_rtp(spec)
    if spec.startswith("/dev/video"):  # a bare device, as jetson-utils takes it
        return V4l2Spec(spec, spec)
    if spec.startswith("csi://"):
        spec_id = spec[len("csi://") :]
        if not spec_id.isdigit():
            raise MobileVLAError(f"bad capture source {spec!r}: the CSI sensor id must be a number, e.g. csi://0")
        return CsiSpec(int(spec_id), spec)
    if spec.startswith("v4l2://"):
        return V4l2Spec(_after(spec, "v4l2://"), spec)
    if spec.startswith("file://"):
        return FileSpec(_after(spec, "file://"), spec)  # file:///abs/x.mp4 -> /abs/x.mp4; file://x.mp4 -> x.mp4
    if spec == "csi" or spec.startswith("csi:"):
        sensor = spec[4:] or "0"
        if not sensor.isdigit():
            raise MobileVLAError(f"bad capture source {spec!r}: the CSI sensor id must be a number, e.g. csi:0")
        return CsiSpec(int(sensor), spec)
    if spec.startswith("v4l2:"):
        return V4l2Spec(_after(spec, "v4l2:"), spec)
    if spec.startswith("file:"):
        return FileSpec(_after(spec, "file:"), spec)
    if spec.startswith("gst:"):
        return GstSpec(_after(spec, "gst:"), spec)
    raise MobileVLAError(f"unknown capture source {spec!r}; expected {CAPTURE_FORMS}")


# jetson-utils' `--input-flip` names, in nvvidconv's flip-method numbering (0..7, what `source.flip_method` holds).
FLIP_NAMES = ("none", "counterclockwise", "rotate-180", "clockwise", "horizontal", "upper-right-diagonal", "vertical",
              "upper-left-diagonal")


def flip_method(name: str, spec: SourceSpec) -> int:
    """`source.flip_method` for a jetson-utils flip name. On a CSI camera jetson-utils swaps `none` and `rotate-180`
    (its CSI cameras are usually mounted upside down), so the same command line gives the same picture here."""
    if name not in FLIP_NAMES:
        raise MobileVLAError(f"--input-flip {name!r}: expected one of {', '.join(FLIP_NAMES)}")
    method = FLIP_NAMES.index(name)
    if isinstance(spec, CsiSpec) and method in (0, 2):
        return 2 - method
    return method
