"""`dds:TOPIC`: frames from a ROS 2 image topic through Cyclone DDS, no ROS install (a camera that is already a ROS
driver, or `ros2 bag play`). sensor_msgs/Image in rgb8, bgr8, rgba8, bgra8 or mono8, or CompressedImage (JPEG/PNG,
decoded with Pillow); best effort, keep last 1, so only the newest image is ever decoded, on the loop's thread.

The frame is resized with the training filter (runtime/preprocess.py `prepare_frame`), as replays are. Its capture
time is the image's header stamp mapped onto this host's monotonic clock, so the deadman and the overrun check see
the image's true age; stamps far from this host's clock (simulated time, a bag played with its recorded stamps) are
logged once and replaced by arrival times. Staleness: no image for `source.stall_timeout_s` is logged (the loop's
deadman already holds the robot at zero); the source waits for the publisher to come back, it never ends."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
from PIL import Image as PILImage

from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing, prepare_frame
from runtime.ros.names import RosNames
from runtime.sources.base import CaptureResult
from runtime.sources.spec import TopicSpec

log = logging.getLogger("runtime.sources")
RAW_ENCODINGS = {"rgb8": ("rgb", 3), "bgr8": ("bgr", 3), "rgba8": ("rgb", 4), "bgra8": ("bgr", 4),
                 "mono8": ("rgb", 1), "8UC1": ("rgb", 1), "8UC3": ("bgr", 3)}
MAX_CLOCK_SKEW_S = 5.0  # a stamp further from this host's clock than this is not the same clock
DDS_SOURCE_HINT = "a dds: source needs Cyclone DDS's Python binding: pip install '.[dds]'"


def raw_image(height: int, width: int, encoding: str, step: int, data: np.ndarray) -> tuple[np.ndarray, str]:
    """(an (H, W, 3) uint8 view or copy, its channel order) of a sensor_msgs/Image."""
    if encoding not in RAW_ENCODINGS:
        raise MobileVLAError(f"image encoding {encoding!r} is not supported; expected one of "
                             f"{', '.join(RAW_ENCODINGS)}: publish one of those (image_proc, cv_bridge) or use the "
                             f"driver's /compressed topic")
    order, channels = RAW_ENCODINGS[encoding]
    if height * step > data.size or step < width * channels or min(height, width) < 1:
        raise ValueError(f"{width}x{height} {encoding} with step {step} needs {height * step} bytes, got {data.size}")
    pixels = data[: height * step].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2), order
    return pixels[..., :3], order


def compressed_image(data: np.ndarray) -> tuple[np.ndarray, str]:
    """A CompressedImage's JPEG/PNG bytes as an RGB image (what the encoder saw, whatever `format` says)."""
    with PILImage.open(io.BytesIO(data.tobytes())) as image:
        return np.asarray(image.convert("RGB")), "rgb"


class TopicSource:
    def __init__(self, spec: TopicSpec, pre: Preprocessing, settings: SourceConfig,
                 names: RosNames | None = None) -> None:
        try:
            from cyclonedds.core import InstanceState, ReadCondition, SampleState, ViewState, WaitSet
            from cyclonedds.sub import DataReader
            from cyclonedds.topic import Topic

            from runtime.dds.images import CompressedImage, Image
            from runtime.dds.participant import dds_topic, participant, sensor_qos
        except ImportError as exc:
            raise MobileVLAError(DDS_SOURCE_HINT) from exc
        self.topic, dds_name = dds_topic(names or RosNames(), spec.topic, f"source {spec.label}")
        self._spec, self._pre, self._settings = spec, pre, settings
        self._participant = participant()
        qos = sensor_qos()
        kind = CompressedImage if spec.compressed else Image
        self._reader: Any = DataReader(self._participant, Topic(self._participant, dds_name, kind, qos=qos), qos=qos)
        self._waitset: Any = WaitSet(self._participant)
        self._waitset.attach(ReadCondition(self._reader, SampleState.Any | ViewState.Any | InstanceState.Any))
        self._delivered = 0
        self._started_at = self._last_at = 0.0
        self._stale_logged = self._skew_logged = False

    @property
    def description(self) -> str:
        kind = "sensor_msgs/CompressedImage" if self._spec.compressed else "sensor_msgs/Image"
        return f"ROS 2 topic {self.topic} ({kind}, Cyclone DDS)"

    def start(self) -> None:
        self._started_at = self._last_at = time.monotonic()
        log.info("source: %s, best effort, newest image only", self.description)

    def read_into(self, dest: np.ndarray, timeout_s: float) -> CaptureResult:
        """The newest image, resized into `dest`; "timeout" when none came within `timeout_s`."""
        self._waitset.wait(int(timeout_s * 1e9))
        samples = self._reader.take(N=1)
        now = time.monotonic()
        if not samples:
            self._check_stale(now)
            return CaptureResult("timeout", self._delivered, now)
        message = samples[-1]
        t0 = time.perf_counter()
        try:
            image, order = compressed_image(message.data) if self._spec.compressed else raw_image(
                message.height, message.width, message.encoding, message.step, message.data)
        except (ValueError, OSError) as exc:  # a corrupt or truncated image: skipped, the deadman covers the gap
            log.warning("source %s: image skipped: %s", self.topic, exc)
            return CaptureResult("timeout", self._delivered, now)
        dest[...] = prepare_frame(np.ascontiguousarray(image), order, self._pre)
        if self._stale_logged:
            log.info("source %s: images again after %.1f s", self.topic, now - self._last_at)
            self._stale_logged = False
        self._delivered += 1
        self._last_at = now
        copy_ms = (time.perf_counter() - t0) * 1e3
        return CaptureResult("frame", self._delivered, self._capture_time(message, now), copy_ms=copy_ms)

    def _capture_time(self, message: Any, arrival: float) -> float:
        stamp = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
        age = time.time() - stamp
        if -0.05 < age <= MAX_CLOCK_SKEW_S:  # a stamp up to 50 ms ahead: the same clock, not quite in step
            return arrival - max(age, 0.0)
        if not self._skew_logged:
            log.warning("source %s: image stamps are %.1f s from this host's clock (simulated time, a bag with its "
                        "recorded stamps, or clocks not synchronized); using arrival times for the frames' age",
                        self.topic, age)
            self._skew_logged = True
        return arrival

    def _check_stale(self, now: float) -> None:
        limit = self._settings.first_frame_timeout_s if self._delivered == 0 else self._settings.stall_timeout_s
        if not self._stale_logged and now - self._last_at > limit:
            what = "no first image" if self._delivered == 0 else "no new image"
            log.warning("source %s: %s for %.1f s (source.%s); holding zero velocity until images arrive (is the "
                        "publisher running, on ROS_DOMAIN_ID and the same network?)", self.topic, what,
                        now - self._last_at, "first_frame_timeout_s" if self._delivered == 0 else "stall_timeout_s")
            self._stale_logged = True

    def stop(self) -> None:
        self._reader = None  # Cyclone DDS deletes entities when their last reference goes
        self._waitset = None
