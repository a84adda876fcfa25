"""V4L2 cameras: which format to capture (raw, MJPEG or H.264), chosen from the caps the camera offers.

`probe_caps` opens the device in a real `v4l2src` (READY: the device is open, nothing streams) and reads the caps of
its src pad; `parse_caps` turns them into `CameraMode`s; `choose_format` picks per `source.v4l2_format`. auto takes
raw when the camera delivers raw at the wanted size (`source.sensor_mode`) with at least `source.fps` (nothing to
decode), else MJPEG, else H.264 at that size and rate (most USB cameras reach their full rates only compressed), else
the first of raw, MJPEG, H.264 it offers, at the size nearest the wanted one. `choose_for` logs the choice and why;
a failed probe is logged and captures raw (or the forced format) at whatever the camera negotiates.
PyGObject is not imported here: the caller passes its Gst module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from runtime.config import V4L2_FORMATS, SourceConfig
from runtime.errors import MobileVLAError
from runtime.sources.spec import V4l2Spec

log = logging.getLogger("runtime.capture")

CAPTURE_FORMATS = V4L2_FORMATS[1:]  # raw, mjpeg, h264: auto's order of preference
MEDIA_TYPES = {"video/x-raw": "raw", "image/jpeg": "mjpeg", "video/x-h264": "h264"}
CAPS_NAMES = {fmt: media for media, fmt in MEDIA_TYPES.items()}
# NTSC-style rates (30000/1001) count as their nominal rate: a "30 fps" camera that says 29.97 reaches 30.
_RATE_SLACK = Fraction(1000, 1001)
_TYPE_TAG = re.compile(r"^\(\w+\)\s*")  # GStreamer's value type tags: (int)640, (fraction)30/1, (string)YUY2

Span = tuple[int, int]  # (low, high), low == high for one value


@dataclass(frozen=True)
class CameraMode:
    """One structure of a camera's caps: a format with the sizes and frame rates it offers, as (low, high) spans."""

    format: str  # raw | mjpeg | h264, else the media type itself (not captured)
    pixel_formats: tuple[str, ...]  # raw: e.g. YUY2, NV12
    widths: tuple[Span, ...]
    heights: tuple[Span, ...]
    rates: tuple[tuple[Fraction, Fraction], ...]  # empty: the camera did not say (or said variable, 0/1)

    def nearest_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The offered size nearest (width, height) (that size itself where offered); None when none is given."""
        if not self.widths or not self.heights:
            return None
        w = min((min(max(width, lo), hi) for lo, hi in self.widths), key=lambda v: abs(v - width))
        h = min((min(max(height, lo), hi) for lo, hi in self.heights), key=lambda v: abs(v - height))
        return w, h

    @property
    def max_rate(self) -> Fraction | None:
        return max((hi for _, hi in self.rates), default=None)

    def rate_for(self, fps: int) -> Fraction | None:
        """`fps` where offered, else the lowest offered rate above it, else the highest offered."""
        wanted = Fraction(fps)
        if any(lo <= wanted <= hi for lo, hi in self.rates):
            return wanted
        return min((lo for lo, _ in self.rates if lo > wanted), default=self.max_rate)

    def fits(self, size: tuple[int, int], fps: int) -> bool:
        """Offers exactly `size` with at least `fps`."""
        rate = self.max_rate
        return self.nearest_size(*size) == size and rate is not None and rate >= fps * _RATE_SLACK

    def describe(self) -> str:
        def spans(values: Iterable[tuple[Any, Any]]) -> str:
            return "|".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in values) or "?"

        pixels = f" ({'/'.join(self.pixel_formats)})" if self.pixel_formats else ""
        rate = "" if self.max_rate is None else f" up to {float(self.max_rate):g} fps"
        return f"{self.format}{pixels} {spans(self.widths)}x{spans(self.heights)}{rate}"


@dataclass(frozen=True)
class V4l2Choice:
    """The format a v4l2 camera is captured as, and the caps asked of it."""

    format: str  # raw | mjpeg | h264
    size: tuple[int, int] | None  # None: left to negotiation (the caps were not probed)
    rate: Fraction | None
    reason: str

    @property
    def caps(self) -> str:
        fields = [CAPS_NAMES[self.format]]
        if self.size is not None:
            fields += [f"width={self.size[0]}", f"height={self.size[1]}"]
        if self.rate is not None:
            fields.append(f"framerate={self.rate.numerator}/{self.rate.denominator}")
        return ",".join(fields)


def _split(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside (), [], {} and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def _values(text: str) -> list[tuple[str, str]]:
    """One field's value as (low, high) spans: `30/1`, `{ 30/1, 15/1 }` (a list) or `[ 16, 1920 ]` (a range)."""
    text = _TYPE_TAG.sub("", text.strip())
    if text.startswith("{") and text.endswith("}"):
        items = [_TYPE_TAG.sub("", item).strip('"') for item in _split(text[1:-1], ",") if item]
        return [(item, item) for item in items]
    if text.startswith("[") and text.endswith("]"):
        low, high, *_step = (_TYPE_TAG.sub("", item) for item in _split(text[1:-1], ","))
        return [(low, high)]
    return [(text.strip('"'), text.strip('"'))]


def _mode(structure: str) -> CameraMode:
    name, *items = _split(structure.strip().rstrip(";"), ",")
    fields = {}
    for item in items:
        key, equals, value = item.partition("=")
        if equals:
            fields[key.strip()] = _values(value)
    rates = tuple((Fraction(lo), Fraction(hi)) for lo, hi in fields.get("framerate", []))
    return CameraMode(
        format=MEDIA_TYPES.get(name.split("(")[0].strip(), name),
        pixel_formats=tuple(lo for lo, _ in fields.get("format", [])),
        widths=tuple((int(lo), int(hi)) for lo, hi in fields.get("width", [])),
        heights=tuple((int(lo), int(hi)) for lo, hi in fields.get("height", [])),
        rates=tuple((lo, hi) for lo, hi in rates if hi > 0),  # 0/1: variable rate, nothing to ask for
    )


def parse_caps(structures: Iterable[str]) -> list[CameraMode]:
    """`CameraMode`s from caps as GStreamer writes them (`Gst.Structure.to_string()` per structure, or a whole caps
    string with `;` between structures). ValueError on a number it cannot read."""
    return [_mode(part) for text in structures for part in _split(text, ";") if part]


def offers(modes: Sequence[CameraMode]) -> str:
    return ", ".join(mode.describe() for mode in modes) or "no formats"


def _at(mode: CameraMode, size: tuple[int, int], fps: int, why: str) -> V4l2Choice:
    chosen = mode.nearest_size(*size)
    rate = mode.rate_for(fps)
    if mode.fits(size, fps):
        return V4l2Choice(mode.format, chosen, rate, why)
    got = "?" if chosen is None else f"{chosen[0]}x{chosen[1]}"
    at = "an unknown rate" if rate is None else f"{float(rate):g} fps"
    return V4l2Choice(mode.format, chosen, rate, f"{why}; nearest it offers to {size[0]}x{size[1]} at {fps} fps is "
                                                 f"{got} at {at}")


def _nearest(modes: Sequence[CameraMode], size: tuple[int, int], fps: int, why: str) -> V4l2Choice:
    """The mode that fits, else the one nearest `size` (then the fastest)."""
    fitting = [mode for mode in modes if mode.fits(size, fps)]
    if fitting:
        return _at(fitting[0], size, fps, why)

    def distance(mode: CameraMode) -> tuple[int, Fraction]:
        got = mode.nearest_size(*size)
        off = 2**31 if got is None else abs(got[0] - size[0]) + abs(got[1] - size[1])
        return off, -(mode.max_rate or Fraction(0))

    return _at(min(modes, key=distance), size, fps, why)


def choose_format(modes: Sequence[CameraMode], wanted: str, size: tuple[int, int], fps: int,
                  label: str) -> V4l2Choice:
    """The format to capture per `wanted` (`source.v4l2_format`), at `size` and `fps` where the camera offers them.
    A forced format the camera does not offer, or a camera with none of raw/MJPEG/H.264, is a MobileVLAError."""
    usable = [mode for mode in modes if mode.format in CAPTURE_FORMATS]
    formats = [fmt for fmt in CAPTURE_FORMATS if any(mode.format == fmt for mode in usable)]
    if wanted != "auto":
        if wanted not in formats:
            raise MobileVLAError(
                f"capture source {label!r}: source.v4l2_format is {wanted}, but the camera offers {offers(modes)}; "
                f"set source.v4l2_format (or --input-codec) to auto or to one it offers: {', '.join(formats) or 'none'}"
            )
        return _nearest([mode for mode in usable if mode.format == wanted], size, fps,
                        f"source.v4l2_format: {wanted}")
    if not formats:
        raise MobileVLAError(
            f"capture source {label!r}: the camera offers {offers(modes)}, none of raw (video/x-raw), MJPEG "
            f"(image/jpeg) or H.264 (video/x-h264); capture it with your own gst:v4l2src device=... ! CAPS ! DECODER"
        )
    want = f"{size[0]}x{size[1]} at {fps} fps"
    for fmt in formats:
        fitting = [mode for mode in usable if mode.format == fmt and mode.fits(size, fps)]
        if fitting:
            why = ("auto: raw reaches " + want + " (nothing to decode)" if fmt == "raw" else
                   f"auto: no {' or '.join(f for f in CAPTURE_FORMATS[:CAPTURE_FORMATS.index(fmt)])} mode reaches "
                   f"{want}; {fmt} does")
            return _at(fitting[0], size, fps, why)
    return _nearest([mode for mode in usable if mode.format == formats[0]], size, fps,
                    f"auto: no raw, mjpeg or h264 mode reaches {want}; {formats[0]} is the first the camera offers")


@dataclass(frozen=True)
class Probe:
    caps: tuple[str, ...]  # one string per caps structure
    error: str | None = None


def probe_caps(device: str, gst: Any) -> Probe:
    """What `device` offers, from a real v4l2src set to READY (the device is opened and queried, nothing streams)."""
    source = gst.ElementFactory.make("v4l2src", None)
    if source is None:
        return Probe((), "v4l2src is not installed (gstreamer1.0-plugins-good)")
    source.set_property("device", device)
    pipeline = gst.Pipeline.new(None)
    pipeline.add(source)  # in a pipeline, the element's errors reach a bus we can read
    try:
        if pipeline.set_state(gst.State.READY) == gst.StateChangeReturn.FAILURE:
            message = pipeline.get_bus().pop_filtered(gst.MessageType.ERROR)
            return Probe((), "v4l2src could not open it" if message is None else message.parse_error()[0].message)
        caps = source.get_static_pad("src").query_caps(None)
        structures = tuple(caps.get_structure(i).to_string() for i in range(caps.get_size()))
        if caps.is_any() or not structures:
            return Probe((), "the device reported no formats")
        return Probe(structures)
    finally:
        pipeline.set_state(gst.State.NULL)


def choose_for(spec: V4l2Spec, settings: SourceConfig, probe: Probe) -> V4l2Choice:
    """`choose_format` on a probe's caps, logged with its reason. A failed probe is logged and captures raw (auto) or
    the forced format, at whatever size and rate the camera negotiates."""
    error = probe.error
    modes: list[CameraMode] = []
    if error is None:
        try:
            modes = parse_caps(probe.caps)
        except ValueError as exc:
            error = f"its caps could not be read ({exc}): {'; '.join(probe.caps)}"
    if error is not None:
        fmt = "raw" if settings.v4l2_format == "auto" else settings.v4l2_format
        log.warning("capture %s: probing the camera's formats failed (%s); capturing %s at whatever size and rate it "
                    "negotiates (source.v4l2_format: %s)", spec.label, error, fmt, settings.v4l2_format)
        return V4l2Choice(fmt, None, None, f"probing the caps failed: {error}")
    choice = choose_format(modes, settings.v4l2_format, settings.sensor_mode, settings.fps, spec.label)
    log.info("capture %s: capturing %s as %s (%s; the camera offers %s)", spec.label, choice.format, choice.caps,
             choice.reason, offers(modes))
    return choice
