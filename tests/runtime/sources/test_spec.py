"""`runtime/sources/spec.py`: every `--source` form parsed once into its kind, and bad specs explained."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.sources.spec import (
    CsiSpec,
    FileSpec,
    GstSpec,
    H5Spec,
    RtpSpec,
    RtspSpec,
    SyntheticSpec,
    TestSpec,
    V4l2Spec,
    parse_capture,
    parse_source,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("csi", CsiSpec(0, "csi")),
    ("csi:1", CsiSpec(1, "csi:1")),
    ("v4l2:/dev/video0", V4l2Spec("/dev/video0", "v4l2:/dev/video0")),
    ("file:a.mp4", FileSpec("a.mp4", "file:a.mp4")),
    ("test", TestSpec()),
    ("gst:videotestsrc ! decodebin", GstSpec("videotestsrc ! decodebin", "gst:videotestsrc ! decodebin")),
    ("synthetic", SyntheticSpec()),
    ("h5:episodes", H5Spec(Path("episodes"), "h5:episodes")),
])
def test_each_form_parses_to_its_kind(text: str, expected: object) -> None:
    spec = parse_source(text)
    assert spec == expected and spec.label == text
    assert isinstance(spec, SyntheticSpec | H5Spec) is (spec.kind in ("synthetic", "h5"))  # a replay, else a capture


def test_kind_and_arg_are_uniform() -> None:
    assert [(s.kind, s.arg) for s in map(parse_source, ("csi:2", "v4l2:/dev/video1", "h5:/data", "synthetic"))] == [
        ("csi", "2"), ("v4l2", "/dev/video1"), ("h5", "/data"), ("synthetic", "")]


@pytest.mark.parametrize("text", ["csi1", "testing", "camera", "http://cam/stream", ""])
def test_unknown_sources_name_every_form(text: str) -> None:
    forms = r"`csi\[:SENSOR_ID\]` \(or `csi://N`\), .*`rtsp://HOST\[:PORT\]/PATH`, .* `synthetic` or `h5:PATH`"
    with pytest.raises(MobileVLAError, match=rf"unknown source {text!r}; expected {forms}"):
        parse_source(text)


def test_bad_capture_specs_say_what_is_wrong() -> None:
    with pytest.raises(MobileVLAError, match=r"bad capture source 'csi:left': the CSI sensor id must be a number"):
        parse_source("csi:left")
    with pytest.raises(MobileVLAError, match=r"bad capture source 'v4l2: ': nothing after `v4l2:`"):
        parse_source("v4l2: ")
    with pytest.raises(MobileVLAError, match=r"unknown capture source 'synthetic'; expected csi\[:SENSOR_ID\]"):
        parse_capture("synthetic")  # a replay is no capture


def test_the_config_parses_its_spec_once() -> None:
    config = SourceConfig(spec="csi:3")
    assert config.parsed is config.parsed and config.parsed == CsiSpec(3, "csi:3")
    with pytest.raises(MobileVLAError, match=r"unknown source 'cam'"):
        _ = SourceConfig(spec="cam").parsed


@pytest.mark.parametrize(("text", "expected"), [
    ("csi://0", CsiSpec(0, "csi://0")),
    ("csi://2", CsiSpec(2, "csi://2")),
    ("v4l2:///dev/video0", V4l2Spec("/dev/video0", "v4l2:///dev/video0")),
    ("/dev/video1", V4l2Spec("/dev/video1", "/dev/video1")),
    ("file:///data/run.mp4", FileSpec("/data/run.mp4", "file:///data/run.mp4")),
    ("file://run.mp4", FileSpec("run.mp4", "file://run.mp4")),  # relative, not the path //run.mp4
    ("rtsp://127.0.0.1:8554/stream", RtspSpec("rtsp://127.0.0.1:8554/stream", "rtsp://127.0.0.1:8554/stream")),
    ("rtp://@:5000", RtpSpec("", 5000, "h264", "rtp://@:5000")),
    ("rtp://127.0.0.1:5004?codec=mjpeg", RtpSpec("127.0.0.1", 5004, "mjpeg", "rtp://127.0.0.1:5004?codec=mjpeg")),
])
def test_jetson_utils_spellings(text: str, expected: object) -> None:
    assert parse_source(text) == expected == parse_capture(text)


@pytest.mark.parametrize(("text", "message"), [
    ("csi://left", r"the CSI sensor id must be a number, e.g. csi://0"),
    ("rtp://@", r"expected rtp://@:PORT or rtp://HOST:PORT with a port in 1-65535"),
    ("rtp://@:70000", r"with a port in 1-65535"),
    ("rtp://@:5000?codec=vp9", r"'codec=vp9' is not a setting of an rtp:// source; expected codec=h264\|h265\|mjpeg"),
    ("rtsp://", r"nothing after `rtsp://`"),
    ("file://", r"nothing after `file://`"),
])
def test_bad_uris_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(MobileVLAError, match=message):
        parse_source(text)
