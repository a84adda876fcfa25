"""PyGObject's GStreamer, imported lazily once (`gst_modules`), and GstBuffer mapping through ctypes
(`gst_buffer_map`): a frame's memory is read in place and copied exactly once, into the caller's array.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import MobileVLAError
from runtime.sources.base import CaptureError

log = logging.getLogger("runtime.capture")

_GST_MAP_READ = 1
_PLUGINS_HINT = (
    "install GStreamer with PyGObject: sudo apt install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good (in a venv: pip install 'PyGObject>=3.42,<3.51', which "
    "builds against libgirepository1.0-dev and libcairo2-dev, or create the venv with --system-site-packages)"
)


class _GstMapInfo(ctypes.Structure):
    """GstMapInfo from gstmemory.h (GST_PADDING = 4); stable ABI since GStreamer 1.0."""

    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


@dataclass(frozen=True)
class GstModules:
    Gst: Any
    GstApp: Any
    GstVideo: Any
    GLib: Any
    lib: Any  # ctypes handle of libgstreamer-1.0 with gst_buffer_map/unmap typed


_MODULES: GstModules | None = None


def gst_modules() -> GstModules:
    """Import PyGObject's GStreamer bindings once and initialise GStreamer; a clear error when they are missing."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")  # without it, appsink objects lack try_pull_sample
        gi.require_version("GstVideo", "1.0")
        from gi.repository import GLib, Gst, GstApp, GstVideo
    except (ImportError, ValueError) as exc:
        raise MobileVLAError(f"camera capture needs PyGObject and GStreamer 1.x ({exc}); {_PLUGINS_HINT}") from exc
    try:
        lib = ctypes.CDLL("libgstreamer-1.0.so.0")
    except OSError as exc:
        raise MobileVLAError(f"cannot load libgstreamer-1.0.so.0 ({exc}); {_PLUGINS_HINT}") from exc
    lib.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(_GstMapInfo), ctypes.c_int]
    lib.gst_buffer_map.restype = ctypes.c_int
    lib.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(_GstMapInfo)]
    lib.gst_buffer_unmap.restype = None
    Gst.init(None)
    _MODULES = GstModules(Gst, GstApp, GstVideo, GLib, lib)
    return _MODULES


def buffer_address(buffer: Any) -> int:
    """The GstBuffer* behind a PyGObject Gst.Buffer: PyGObject's boxed hash is the wrapped pointer (tests check it)."""
    address = hash(buffer)
    if address <= 0:  # user-space pointers are positive on x86-64 and aarch64; anything else is not a pointer
        raise RuntimeError(f"hash(Gst.Buffer) gave {address}, not a GstBuffer pointer: PyGObject changed")
    return address


class BufferMapper:
    """Maps GstBuffers read-only with one reusable GstMapInfo: no allocation that outlives a frame."""

    def __init__(self) -> None:
        self._lib = gst_modules().lib
        self._info = _GstMapInfo()
        self._info_ptr = ctypes.pointer(self._info)
        self._mapped: int | None = None
        self._array_type: Any = None  # ctypes array type of the last mapped size (ctypes caches these anyway)

    def map(self, buffer: Any) -> np.ndarray:
        """A flat uint8 view of the buffer's memory, valid until `unmap()`; nothing is copied."""
        if self._mapped is not None:
            raise RuntimeError("BufferMapper.map: the previous buffer is still mapped")
        address = buffer_address(buffer)
        if not self._lib.gst_buffer_map(address, self._info_ptr, _GST_MAP_READ):
            raise CaptureError("gst_buffer_map failed on a captured frame: the buffer's memory cannot be read")
        self._mapped = address
        size = int(self._info.size)
        if self._array_type is None or ctypes.sizeof(self._array_type) != size:
            self._array_type = ctypes.c_uint8 * size
        return np.frombuffer(self._array_type.from_address(self._info.data), dtype=np.uint8)

    @property
    def data_address(self) -> int:
        """The mapped memory's address (while mapped)."""
        return int(self._info.data or 0)

    def unmap(self) -> None:
        if self._mapped is not None:
            self._lib.gst_buffer_unmap(self._mapped, self._info_ptr)
            self._mapped = None


def loaded_gst() -> GstModules | None:
    """The modules if `gst_modules()` has loaded them, else None (nothing is imported)."""
    return _MODULES


class FrameCopier:
    """The one copy of each frame: mapped GstBuffer memory (no copy) into the caller's `(S, S, C)` array, honouring
    row stride padding. The layout is learnt from the first buffer of each pipeline run (`new_run`)."""

    def __init__(self, shape: tuple[int, int, int], label: str, frame_format: str) -> None:
        self._shape = shape
        self._label = label  # the source spec, for messages
        self._frame_format = frame_format
        self._mapper = BufferMapper()
        self._layout: tuple[int, int, int] | None = None  # (buffer size, offset, row stride) of the current run

    def new_run(self) -> None:
        self._layout = None

    def release(self) -> None:
        self._mapper.unmap()

    def copy(self, sample: Any, buffer: Any, dest: np.ndarray) -> None:
        flat = self._mapper.map(buffer)
        try:
            if self._layout is None or self._layout[0] != flat.size:
                self._layout = self._frame_layout(sample, buffer, flat.size)
            _, offset, stride = self._layout
            view = np.ndarray(self._shape, np.uint8, buffer=flat, offset=offset, strides=(stride, self._shape[2], 1))
            np.copyto(dest, view)
            del view
        finally:
            del flat
            self._mapper.unmap()

    def _frame_layout(self, sample: Any, buffer: Any, nbytes: int) -> tuple[int, int, int]:
        """(buffer size, first row offset, row stride): tight unless the video meta or the caps say otherwise."""
        size, _, channels = self._shape
        row = size * channels
        if nbytes == row * size:
            return nbytes, 0, row
        modules = gst_modules()
        meta = modules.GstVideo.buffer_get_video_meta(buffer)
        if meta is not None:
            offset, stride = int(meta.offset[0]), int(meta.stride[0])
        else:
            info = modules.GstVideo.VideoInfo.new_from_caps(sample.get_caps())
            offset, stride = int(info.offset[0]), int(info.stride[0])
        if stride < row or offset + stride * (size - 1) + row > nbytes:
            caps = sample.get_caps()
            raise CaptureError(
                f"capture source {self._label!r} delivered a {nbytes}-byte buffer for a {size}x{size} "
                f"{self._frame_format} frame (row stride {stride}, offset {offset}, needs at least "
                f"{offset + stride * (size - 1) + row} bytes); caps {caps.to_string() if caps else '?'}. The "
                "converter in front of the appsink did not deliver the negotiated frame size"
            )
        log.debug("capture %s: padded rows, stride %d for %d bytes of pixels", self._label, stride, row)
        return nbytes, offset, stride
