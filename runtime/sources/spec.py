"""`--source` specs, parsed once into a small dataclass per kind (what `open_source` dispatches on).

- `csi[:SENSOR_ID]`, `v4l2:/dev/videoN`, `file:PATH`, `test`, `gst:DESCRIPTION`: GStreamer captures
  (runtime/sources/gstreamer/);
- `synthetic` (a generated scene) and `h5:PATH` (recorded episodes): replays (runtime/sources/replay.py).

Every spec has `kind`, `arg` (sensor id, device, path or description; "" where there is none) and `label` (the spec
as the user wrote it, for messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from runtime.errors import MobileVLAError

SOURCE_FORMS = "`csi[:SENSOR_ID]`, `v4l2:/dev/videoN`, `file:PATH`, `test`, `gst:DESCRIPTION`, `synthetic` or `h5:PATH`"
CAPTURE_FORMS = "csi[:SENSOR_ID], v4l2:/dev/videoN, file:PATH, test or gst:DESCRIPTION"


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


CaptureSpec = CsiSpec | V4l2Spec | FileSpec | TestSpec | GstSpec
ReplaySpec = SyntheticSpec | H5Spec
SourceSpec = CaptureSpec | ReplaySpec


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
    if spec in ("csi", "test") or spec.startswith(("csi:", "v4l2:", "file:", "gst:")):
        return parse_capture(spec)
    raise MobileVLAError(f"unknown source {spec!r}; expected {SOURCE_FORMS}")


def parse_capture(spec: str) -> CaptureSpec:
    if spec == "test":
        return TestSpec()
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
