"""Recorded images through the capture pipeline's own scaler: `appsrc ! <camera tail> ! appsink`.

The tail is the text the camera paths end in (`scale_tail`: `videoscale method=M ! videoconvert ! caps`, or
`nvvidconv interpolation-method=N ! caps` on a Jetson), so a skew measurement (runtime/skew.py) runs the elements
the robot runs, on the images the policy was trained on. Frames go in one at a time and come back synchronously;
each result is copied once, by the capture's own `FrameCopier`, into the bundle's frame layout.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from runtime.config import NVVIDCONV_METHODS, VIDEOSCALE_METHODS, SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice
from runtime.sources.gstreamer.buffer import FrameCopier, gst_modules
from runtime.sources.gstreamer.pipeline import SINK_NAME, last_step_tail, scale_tail

SCALERS = {"videoscale": VIDEOSCALE_METHODS, "nvvidconv": NVVIDCONV_METHODS}
SOURCE_NAME = "mvla_resize_src"
_PULL_TIMEOUT_S = 10.0  # one 720p frame through a CPU scaler takes milliseconds; this long means it is stuck
_FRAME_NS = 33_333_333


def scaler_available(scaler: str) -> bool:
    """Whether this host's GStreamer has the scaler's element (nvvidconv: a Jetson with JetPack's plugins)."""
    return gst_modules().Gst.ElementFactory.find(scaler) is not None


def scaler_settings(scaler: str, method: str) -> SourceConfig:
    """Capture settings that make `scale_tail` use `method` on `scaler` (flip 0: recorded images are upright)."""
    check_choice("scaler", scaler, tuple(SCALERS))
    check_choice(f"{scaler} method", method, SCALERS[scaler])
    if scaler == "videoscale":
        return replace(SourceConfig(), resize_method=method)
    return replace(SourceConfig(), vic_resize_method=method)


class GstResizer:
    """`appsrc (in_format, in_shape) ! tail ! appsink` as a function `image -> (S, S, C) frame`; a context manager.
    `seconds` and `frames` give its cost per frame (push, scale, convert, pull and the one copy)."""

    def __init__(self, name: str, tail: str, in_format: str, in_shape: tuple[int, int, int], out_size: int,
                 pre: Preprocessing, widen: bool = False) -> None:
        self.name = name
        self._in_shape = in_shape
        self._shape = (out_size, out_size, pre.channels)
        height, width = in_shape[:2]
        caps = f"video/x-raw,format={in_format},width={width},height={height},framerate=0/1"
        # nvvidconv takes no 24-bit RGB from system memory (BGRx, RGBA, YUV): `widen` converts at input size first.
        head = f'appsrc name={SOURCE_NAME} format=time caps="{caps}"' + (
            " ! videoconvert ! video/x-raw,format=RGBA" if widen else "")
        sink = (f"appsink name={SINK_NAME} sync=false drop=false max-buffers=1 emit-signals=false "
                "enable-last-sample=false")
        self.description = f"{head} ! {tail} ! {sink}"
        modules = gst_modules()
        try:
            self._pipeline: Any = modules.Gst.parse_launch(self.description)
        except modules.GLib.Error as exc:
            raise MobileVLAError(f"GStreamer cannot build the resize pipeline {self.description!r}: {exc.message}; "
                                 f"check the GStreamer install (gst-inspect-1.0 videoscale)") from exc
        self._src = self._pipeline.get_by_name(SOURCE_NAME)
        self._sink = self._pipeline.get_by_name(SINK_NAME)
        self._bus = self._pipeline.get_bus()
        self._copier = FrameCopier(self._shape, name, pre.frame_format)
        self.frames = 0
        self.seconds = 0.0
        if self._pipeline.set_state(modules.Gst.State.PLAYING) == modules.Gst.StateChangeReturn.FAILURE:
            problem = self._bus_error() or "no reason given"
            self.close()
            raise MobileVLAError(f"the resize pipeline did not start: {problem}; pipeline: {self.description}")

    def resize(self, image: np.ndarray) -> np.ndarray:
        if image.shape != self._in_shape or image.dtype != np.uint8:
            raise MobileVLAError(f"{self.name}: an image of {image.dtype} {image.shape} does not match the "
                                 f"{self._in_shape} uint8 images this resizer was built for")
        gst = gst_modules().Gst
        start = time.perf_counter()
        buffer = gst.Buffer.new_wrapped(np.ascontiguousarray(image).tobytes())
        buffer.pts, buffer.duration = self.frames * _FRAME_NS, _FRAME_NS
        if self._src.emit("push-buffer", buffer) != gst.FlowReturn.OK:
            raise MobileVLAError(f"{self.name}: the resize pipeline refused a frame ({self._bus_error() or '?'}); "
                                 f"pipeline: {self.description}")
        sample = self._sink.try_pull_sample(int(_PULL_TIMEOUT_S * 1e9))
        if sample is None:
            raise MobileVLAError(f"{self.name}: no frame came out of the resize pipeline within {_PULL_TIMEOUT_S:g} s "
                                 f"({self._bus_error() or 'no error reported'}); pipeline: {self.description}")
        out = np.empty(self._shape, dtype=np.uint8)
        self._copier.copy(sample, sample.get_buffer(), out)
        self.seconds += time.perf_counter() - start
        self.frames += 1
        return out

    @property
    def ms_per_frame(self) -> float:
        return self.seconds / self.frames * 1e3 if self.frames else float("nan")

    def _bus_error(self) -> str | None:
        message = self._bus.pop_filtered(gst_modules().Gst.MessageType.ERROR)
        return None if message is None else str(message.parse_error()[0].message)

    def close(self) -> None:
        if self._pipeline is not None:
            self._copier.release()
            self._pipeline.set_state(gst_modules().Gst.State.NULL)
            self._pipeline = None

    def __enter__(self) -> GstResizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def scaler_resizer(scaler: str, method: str, pre: Preprocessing, source_color: str, shape: tuple[int, int],
                   size: int | None = None, announce: str | None = None) -> GstResizer:
    """A recorded `(H, W, 3)` image (channels in `source_color` order) through `scaler` with `method`, to the
    bundle's frame at S (or `size`). `announce`: the order the appsrc caps claim (default: the true one); a
    mismatch is a planted BGR/RGB mistake, which the skew report must show (tests/runtime/test_skew.py)."""
    check_choice("source colour order", source_color, COLOR_ORDERS)
    if not scaler_available(scaler):
        raise MobileVLAError(
            f"{scaler} is not available on this host (GStreamer has no {scaler} element), so its methods cannot be "
            f"measured here: nvvidconv needs a Jetson with JetPack's GStreamer plugins (nvidia-l4t-gstreamer), "
            f"videoscale gstreamer1.0-plugins-base; measure the videoscale methods here, the nvvidconv ones on the "
            f"robot"
        )
    tail = scale_tail(pre, scaler_settings(scaler, method), scaler == "nvvidconv", size)
    fmt = (announce or source_color).upper()
    return GstResizer(f"{scaler}:{method}", tail, fmt, (shape[0], shape[1], 3), size or pre.image_size, pre,
                      widen=scaler == "nvvidconv")


def last_step_resizer(pre: Preprocessing, resize_method: str, in_size: int) -> GstResizer:
    """The two-stage path's CPU step alone: an `(in_size, in_size, C)` frame -> `videoscale method=resize_method`
    -> S, the same text `source.two_stage` appends after the VIC."""
    tail = last_step_tail(pre, scaler_settings("videoscale", resize_method))
    return GstResizer(f"videoscale:{resize_method} (last step)", tail, pre.frame_format,
                      (in_size, in_size, pre.channels), pre.image_size, pre)
