"""The `dds:TOPIC` image source and `/diagnostics` over a real DDS wire (Cyclone DDS participants in this process,
loopback unicast only: tests/conftest.py): a camera publishes sensor_msgs/Image or CompressedImage, the runtime turns
the images into commands on a namespaced, remapped topic, and its diagnostics arrive and parse."""

# No `from __future__ import annotations`: Cyclone DDS reads the field types at class creation.

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cyclonedds", reason="the dds source needs pip install '.[dds]'")

from PIL import Image as PILImage

from runtime.cli import main
from runtime.config import SourceConfig
from runtime.dds.images import CompressedImage, Image
from runtime.dds.messages import DiagnosticArray, Header, Twist, ros_time
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing, prepare_frame
from runtime.sources.dispatch import open_source
from runtime.sources.topic import raw_image
from tests.fakes.dds import publisher, subscriber

PRE = Preprocessing(image_size=32, frame_format="RGBA")
RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def image_message(pixels: np.ndarray, encoding: str = "rgb8", stamp: float | None = None) -> Image:
    height, width, channels = pixels.shape
    header = Header(ros_time(time.time() if stamp is None else stamp), "camera")
    return Image(header, height, width, encoding, 0, width * channels, pixels.tobytes())


def read_frames(source: Any, writer: Any, message: Any, count: int = 1, timeout_s: float = 5.0) -> list[Any]:
    """Publish until the source delivered `count` frames (discovery over loopback takes a moment)."""
    dest = np.zeros((PRE.image_size, PRE.image_size, PRE.channels), np.uint8)
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        writer.write(message)
        result = source.read_into(dest, 0.1)
        if result.status == "frame":
            got.append((result, dest.copy()))
    assert len(got) == count, f"{len(got)} of {count} frames within {timeout_s} s"
    return got


def test_raw_encodings_and_padded_rows_become_the_training_frame() -> None:
    padded = np.zeros((48, 64 * 3 + 8), np.uint8)
    padded[:, : 64 * 3] = PICTURE.reshape(48, -1)
    image, order = raw_image(48, 64, "rgb8", 64 * 3 + 8, padded.ravel())
    assert order == "rgb" and np.array_equal(image, PICTURE)
    image, order = raw_image(48, 64, "bgr8", 64 * 3, PICTURE[..., ::-1].copy().ravel())
    assert np.array_equal(prepare_frame(np.ascontiguousarray(image), order, PRE), prepare_frame(PICTURE, "rgb", PRE))
    gray, _ = raw_image(48, 64, "mono8", 64, PICTURE[..., 0].copy().ravel())
    assert gray.shape == (48, 64, 3) and np.array_equal(gray[..., 2], PICTURE[..., 0])
    with pytest.raises(MobileVLAError, match=r"image encoding 'yuv422' is not supported; expected one of rgb8"):
        raw_image(48, 64, "yuv422", 128, np.zeros(48 * 128, np.uint8))
    with pytest.raises(ValueError, match=r"needs 9216 bytes, got 100"):
        raw_image(48, 64, "rgb8", 192, np.zeros(100, np.uint8))


def test_the_fast_cdr_reader_matches_cyclone_dds_own_encoding() -> None:
    message = image_message(PICTURE, stamp=12.5)
    decoded = Image.deserialize(message.serialize())
    assert (decoded.header.stamp.sec, decoded.header.stamp.nanosec, decoded.header.frame_id) == (12, 500_000_000,
                                                                                                 "camera")
    assert (decoded.height, decoded.width, decoded.encoding, decoded.step) == (48, 64, "rgb8", 192)
    assert np.array_equal(decoded.data.reshape(48, 64, 3), PICTURE)
    with pytest.raises(MobileVLAError, match=r"the sample ends early"):
        Image.deserialize(message.serialize()[:30])


def test_an_image_topic_delivers_the_newest_image_with_its_stamp() -> None:
    writer = publisher("rt/cam1/image_raw", Image)
    source = open_source(SourceConfig(spec="dds:/cam1/image_raw"), PRE)
    source.start()
    try:
        [(result, frame)] = read_frames(source, writer, image_message(PICTURE, stamp=time.time() - 0.2))
    finally:
        source.stop()
    assert np.array_equal(frame, prepare_frame(PICTURE, "rgb", PRE))
    assert 0.15 < time.monotonic() - result.capture_time < 2.0  # the header stamp, not the arrival
    assert "ROS 2 topic /cam1/image_raw (sensor_msgs/Image" in source.description


def test_a_compressed_topic_is_decoded_as_jpeg() -> None:
    buffer = io.BytesIO()
    PILImage.fromarray(PICTURE).save(buffer, "PNG")  # lossless, so the frame must match exactly
    message = CompressedImage(Header(ros_time(time.time()), "camera"), "png", buffer.getvalue())
    writer = publisher("rt/cam2/image_raw/compressed", CompressedImage)
    source = open_source(SourceConfig(spec="dds:cam2/image_raw/compressed"), PRE)
    source.start()
    try:
        [(_, frame)] = read_frames(source, writer, message)
    finally:
        source.stop()
    assert np.array_equal(frame, prepare_frame(PICTURE, "rgb", PRE))


def test_no_image_is_a_timeout_and_logged_as_stale(caplog: pytest.LogCaptureFixture) -> None:
    source = open_source(SourceConfig(spec="dds:/nobody/image_raw", first_frame_timeout_s=0.1), PRE)
    source.start()
    dest = np.zeros((PRE.image_size, PRE.image_size, PRE.channels), np.uint8)
    statuses = {source.read_into(dest, 0.1).status for _ in range(3)}
    source.stop()
    assert statuses == {"timeout"}
    assert "no first image for" in caplog.text and "holding zero velocity" in caplog.text


def test_an_image_topic_drives_the_policy_with_ros_args_and_diagnostics(demo_bundle: Path) -> None:
    """`runtime --source dds:camera/image_raw --sink dds --ros-args -r __ns:=/robot1 -r cmd_vel:=drive`: commands on
    /robot1/drive, DiagnosticArray on /diagnostics at 1 Hz."""
    commands = subscriber("rt/robot1/drive", Twist)
    diagnostics = subscriber("rt/diagnostics", DiagnosticArray)
    writer = publisher("rt/robot1/camera/image_raw", Image)
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(0.05):
            writer.write(image_message(PICTURE))

    feeder = threading.Thread(target=publish, daemon=True)
    feeder.start()
    try:
        code = main(["--bundle", str(demo_bundle), "--source", "dds:camera/image_raw", "--sink", "dds",
                     "--control", "none", "--frames", "40", "--no-verify",
                     "--ros-args", "-r", "__ns:=/robot1", "-r", "cmd_vel:=drive", "-p", "ros2.diagnostics:=on",
                     "-p", "safety.frame_deadline_s:=1.0"])
    finally:
        stop.set()
        feeder.join()
    assert code == 0
    received = commands.take(N=100)
    assert received and all(np.isfinite([c.linear.x, c.linear.y, c.angular.z]).all() for c in received)
    reports = diagnostics.take(N=10)
    assert reports, "no DiagnosticArray within the run"
    status = reports[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "mobile_vla_runtime: policy" and status.level in (0, 1)
    assert int(values["frames"]) > 0 and float(values["fps"]) > 0 and values["backend"].startswith("onnxruntime")
    assert "/robot1/camera/image_raw" in values["source"] and "mem_available_mb" in values
