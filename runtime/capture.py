"""Camera and file capture through GStreamer (PyGObject `appsink`), straight into the vision graph's frame layout.

Sources (`--source` specs):
- `csi[:SENSOR_ID]`: `nvarguscamerasrc` -> `nvvidconv` (the Jetson's VIC converts and scales in hardware; the CPU
  never touches sensor-size pixels) -> RGBA `(S, S)`.
- `v4l2:/dev/videoN`: a USB/UVC camera (`v4l2src`), scaled and converted on the CPU.
- `file:PATH`: any video GStreamer decodes; clock-synced by default so a file behaves like a camera.
- `test`: `videotestsrc` (live, a moving ball) at the sensor mode and frame rate; needs no hardware.
- `gst:DESCRIPTION`: the user's own source description (e.g. `rtspsrc ... ! decodebin`); the tail is appended. Live
  (GStreamer: no preroll) it is a camera, whose end of stream is a failure; non-live it ends like a file.

Every frame arrives as the `(S, S, C)` uint8 frame of `Preprocessing.frame_format`, the layout `prepare_frame` would
produce from the same RGB image. The resize is the scaler's (VIC or `videoscale`), not PIL's: camera frames are not
bit-identical to `prepare_frame`'s antialiased bilinear resize of the same picture, only close.

Buffers are mapped with `gst_buffer_map` through ctypes and copied exactly once, into the caller's array. Stalls,
pipeline errors and a live source's end of stream are repaired by tearing the pipeline down and rebuilding it with
exponential backoff; `read_into` never blocks much longer than its timeout, because the caller's deadman (stop the
robot when frames are late) depends on it. PyGObject and GStreamer are imported lazily: `runtime` imports on
machines without them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import MobileVLAError
from runtime.preprocess import FRAME_FORMATS, Preprocessing
from runtime.sources import CaptureResult

log = logging.getLogger("runtime.capture")

CAPTURE_KINDS = ("csi", "v4l2", "file", "test", "gst")
SINK_NAME = "mvla_capture_sink"
_POLL_SLICE_S = 0.02  # longest single wait inside read_into: the bus and the stall clock are checked this often
_CLOCK_TIME_NONE = 2**64 - 1  # GST_CLOCK_TIME_NONE
_GST_MAP_READ = 1
_PLUGINS_HINT = (
    "install GStreamer with PyGObject: sudo apt install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good (in a venv: pip install 'PyGObject>=3.42,<3.51', which "
    "builds against libgirepository1.0-dev and libcairo2-dev, or create the venv with --system-site-packages)"
)
# nvvidconv's flip-method numbering (what the robot uses) -> videoflip's method for the CPU-side sources.
_VIDEOFLIP_METHODS = ("none", "counterclockwise", "rotate-180", "clockwise", "horizontal-flip", "upper-right-diagonal",
                      "vertical-flip", "upper-left-diagonal")


class CaptureError(MobileVLAError):
    """The camera stopped delivering frames and reconnecting did not bring it back."""


@dataclass(frozen=True)
class CaptureSettings:
    sensor_mode: tuple[int, int] = (1280, 720)  # csi: the Argus sensor mode; test: the generated size
    fps: int = 30
    flip_method: int = 0  # nvvidconv numbering: 0 none, 1 ccw 90, 2 180, 3 cw 90, 4 horizontal, 6 vertical, 5/7 diag
    frame_deadline_s: float = 0.25  # newest frame older than this -> the caller's deadman zeroes the robot
    stall_timeout_s: float = 1.0  # no new frame for this long -> tear down and reconnect
    first_frame_timeout_s: float = 5.0
    reconnect_attempts: int = 5  # consecutive failed reconnects before giving up
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    healthy_run_s: float = 30.0  # a live source that ends the stream sooner after a reconnect: a failed attempt
    file_sync: bool = True  # file: play at the file's own rate (like a camera); False: as fast as frames are read
    file_loop: bool = False

    def __post_init__(self) -> None:
        width, height = self.sensor_mode
        problems = []
        if width <= 0 or height <= 0:
            problems.append(f"sensor_mode must be positive, got {width}x{height}")
        if self.fps <= 0:
            problems.append(f"fps must be positive, got {self.fps}")
        if not 0 <= self.flip_method <= 7:
            problems.append(f"flip_method must be 0..7 (nvvidconv numbering), got {self.flip_method}")
        for name in ("frame_deadline_s", "stall_timeout_s", "first_frame_timeout_s", "healthy_run_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.reconnect_attempts < 0:
            problems.append(f"reconnect_attempts must be >= 0, got {self.reconnect_attempts}")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            problems.append(f"need 0 <= backoff_s <= backoff_max_s, got {self.backoff_s} and {self.backoff_max_s}")
        if problems:
            raise MobileVLAError("invalid capture settings: " + "; ".join(problems))


@dataclass(frozen=True)
class _Spec:
    kind: str
    arg: str  # sensor id, device, file path or description
    label: str  # the spec as the user wrote it, for messages


def is_capture_spec(spec: str) -> bool:
    """Whether `spec` names a GStreamer source (the other sources live in runtime.sources)."""
    return spec in ("csi", "test") or spec.startswith(("csi:", "v4l2:", "file:", "gst:"))


def _parse_spec(spec: str) -> _Spec:
    if spec == "test":
        return _Spec("test", "", spec)
    if spec == "csi" or spec.startswith("csi:"):
        sensor = spec[4:] or "0"
        if not sensor.isdigit():
            raise MobileVLAError(f"bad capture source {spec!r}: the CSI sensor id must be a number, e.g. csi:0")
        return _Spec("csi", str(int(sensor)), spec)
    for kind in ("v4l2", "file", "gst"):
        if spec.startswith(kind + ":"):
            arg = spec[len(kind) + 1 :].strip()
            if not arg:
                raise MobileVLAError(f"bad capture source {spec!r}: nothing after `{kind}:`")
            return _Spec(kind, arg, spec)
    raise MobileVLAError(
        f"unknown capture source {spec!r}; expected csi[:SENSOR_ID], v4l2:/dev/videoN, file:PATH, test or "
        "gst:DESCRIPTION"
    )


def _appsink(sync: bool, drop: bool) -> str:
    # max-buffers=1 + drop=true: the sink keeps only the newest frame (latest-frame semantics, bounded latency).
    # enable-last-sample=false: no extra buffer reference held by the sink between pulls.
    return (f"appsink drop={str(drop).lower()} max-buffers=1 sync={str(sync).lower()} emit-signals=false "
            f"enable-last-sample=false name={SINK_NAME}")


def _cpu_tail(pre: Preprocessing, settings: CaptureSettings) -> str:
    """Scale first (cheaper than converting sensor-size pixels), then convert; flip the small frame."""
    size = pre.image_size
    flip = f" ! videoflip method={_VIDEOFLIP_METHODS[settings.flip_method]}" if settings.flip_method else ""
    # No pixel-aspect-ratio in the caps: videoscale squashes to S x S as the training resize did (no letterbox).
    return f"videoscale ! videoconvert{flip} ! video/x-raw,width={size},height={size},format={pre.frame_format}"


def _sink_mode(spec: _Spec, settings: CaptureSettings) -> tuple[bool, bool]:
    """(sync, drop) of the appsink per source kind."""
    if spec.kind == "file":
        # Synced: played at the file's rate, stale frames dropped like a camera. Unsynced: every frame, as fast as the
        # caller reads (drop=false makes the decoder wait for the reader instead of skipping frames).
        return (True, True) if settings.file_sync else (False, False)
    return False, True  # live sources: frames are already real-time; waiting on the clock only adds latency


def pipeline_description(spec: str, pre: Preprocessing, settings: CaptureSettings) -> str:
    """The gst-launch-1.0 description of a capture spec (paste it after `gst-launch-1.0 -v` to debug a camera)."""
    source = _parse_spec(spec)
    if pre.frame_format not in FRAME_FORMATS:
        raise MobileVLAError(f"unknown frame_format {pre.frame_format!r}; expected one of {', '.join(FRAME_FORMATS)}")
    sink = _appsink(*_sink_mode(source, settings))
    size, (width, height), fps = pre.image_size, settings.sensor_mode, settings.fps
    if source.kind == "csi":
        head = (f"nvarguscamerasrc sensor-id={source.arg} ! "
                f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
                f"nvvidconv flip-method={settings.flip_method} ! video/x-raw,width={size},height={size},format=RGBA")
        if pre.frame_format != "RGBA":
            # nvvidconv writes RGBA/BGRx only; the remaining conversion is at S x S, which costs the CPU ~nothing.
            head += f" ! videoconvert ! video/x-raw,format={pre.frame_format}"
        return f"{head} ! {sink}"
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


# --- GStreamer loading (lazy) -------------------------------------------------------------------------------------


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
class _GstModules:
    Gst: Any
    GstApp: Any
    GstVideo: Any
    GLib: Any
    lib: Any  # ctypes handle of libgstreamer-1.0 with gst_buffer_map/unmap typed


_MODULES: _GstModules | None = None


def _gst() -> _GstModules:
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
    _MODULES = _GstModules(Gst, GstApp, GstVideo, GLib, lib)
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
        self._lib = _gst().lib
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


# --- the capture ---------------------------------------------------------------------------------------------------

_KIND_ELEMENTS = {
    "csi": ("nvarguscamerasrc", "nvvidconv"),
    "v4l2": ("v4l2src", "videoscale", "videoconvert"),
    "file": ("uridecodebin", "videoscale", "videoconvert"),
    "test": ("videotestsrc", "videoscale", "videoconvert"),
    "gst": ("videoscale", "videoconvert"),
}
_ELEMENT_PACKAGES = {
    "v4l2src": "gstreamer1.0-plugins-good",
    "videoflip": "gstreamer1.0-plugins-good",
}


def _failure_hint(spec: _Spec) -> str:
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
    return (
        f"Likely cause: your GStreamer description {spec.arg!r}; check it alone with: gst-launch-1.0 -v "
        f"{spec.arg} ! videoconvert ! fakesink"
    )


def _check_source(spec: _Spec) -> None:
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


def _check_elements(spec: _Spec, settings: CaptureSettings, gst: Any) -> None:
    wanted = [*_KIND_ELEMENTS[spec.kind], "appsink"]
    if settings.flip_method and spec.kind != "csi":
        wanted.append("videoflip")
    for name in wanted:
        if gst.ElementFactory.find(name) is not None:
            continue
        if name in ("nvarguscamerasrc", "nvvidconv"):
            raise MobileVLAError(
                f"{name} is not installed: csi capture needs a Jetson with JetPack's GStreamer plugins "
                "(nvidia-l4t-gstreamer); elsewhere use v4l2:/dev/videoN, file:PATH or test"
            )
        package = _ELEMENT_PACKAGES.get(name, "gstreamer1.0-plugins-base")
        raise MobileVLAError(
            f"GStreamer element {name} is not installed (needed by capture source {spec.label!r}): "
            f"sudo apt install {package}"
        )


def _set_null(pipeline: Any) -> None:
    """Finaliser: a pipeline left in PLAYING keeps the camera open (and can wedge nvargus-daemon)."""
    gst = _MODULES
    if gst is not None:
        pipeline.set_state(gst.Gst.State.NULL)


class GstCapture:
    """One capture source. `read_into` copies the newest frame into the caller's array (a context manager)."""

    def __init__(self, spec: str, pre: Preprocessing, settings: CaptureSettings) -> None:
        self._spec = _parse_spec(spec)
        self._pre = pre
        self._settings = settings
        self._description = pipeline_description(spec, pre, settings)
        self._shape = (pre.image_size, pre.image_size, pre.channels)
        self._pipeline: Any = None
        self._sink: Any = None
        self._bus: Any = None
        self._finalizer: weakref.finalize | None = None
        self._mapper: BufferMapper | None = None
        self._started = False
        self._live = True  # learnt at start(): a non-live pipeline prerolls
        self._pts_clock: bool | None = None  # per pipeline run: may PTS + base time be read as time.monotonic()?
        self._layout: tuple[int, int, int] | None = None  # (buffer size, offset, row stride) of the current run
        self._index = 0
        self._last_pts: int | None = None
        self._ended = False
        self._streaming = False  # a frame arrived since the pipeline was (re)built
        self._run_started_at = 0.0
        self._last_frame_at = 0.0
        self._next_attempt_at = 0.0
        self._failed_reconnects = 0
        self._reconnects = 0
        self._failing_since: float | None = None
        self._live_ends = 0  # live runs in a row that ended the stream, each within healthy_run_s of its start

    # -- public API --

    @property
    def description(self) -> str:
        return self._description

    @property
    def reconnects(self) -> int:
        """Pipeline rebuilds so far (attempts, successful or not)."""
        return self._reconnects

    def __enter__(self) -> GstCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Check the source, build the pipeline and set it playing; a bad spec raises MobileVLAError here."""
        if self._started:
            return
        _check_source(self._spec)
        modules = _gst()
        self._ended = False
        self._failed_reconnects = 0
        self._failing_since = None
        _check_elements(self._spec, self._settings, modules.Gst)
        self._mapper = BufferMapper()
        try:
            self._build()
            Gst = modules.Gst
            change = self._pipeline.set_state(Gst.State.PAUSED)
            if change == Gst.StateChangeReturn.FAILURE:
                raise MobileVLAError(self._start_failure("the pipeline failed to start"))
            self._live = change == Gst.StateChangeReturn.NO_PREROLL
            if change == Gst.StateChangeReturn.ASYNC:
                # Non-live (files): wait for preroll, so an undecodable file fails here rather than after retries.
                change, _, _ = self._pipeline.get_state(int(self._settings.first_frame_timeout_s * 1e9))
                if change == Gst.StateChangeReturn.FAILURE:
                    raise MobileVLAError(self._start_failure("the pipeline failed to preroll"))
            if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                raise MobileVLAError(self._start_failure("the pipeline failed to play"))
        except BaseException:
            self._teardown()
            raise
        self._started = True
        self._run_started_at = time.monotonic()
        log.info("capture %s started (%s): %s", self._spec.label, "live" if self._live else "not live",
                 self._description)

    def stop(self) -> None:
        """Pipeline to NULL (idempotent). CSI gets an EOS first: Argus needs a clean stop or its daemon may wedge."""
        if self._pipeline is not None and self._spec.kind == "csi" and self._streaming:
            gst = _gst().Gst
            self._pipeline.send_event(gst.Event.new_eos())
            self._bus.timed_pop_filtered(int(1e9), gst.MessageType.EOS | gst.MessageType.ERROR)
        self._teardown()
        self._started = False

    def read_into(self, dest: np.ndarray, timeout_s: float) -> CaptureResult:
        """Wait up to about `timeout_s` for a new frame and copy it into `dest` (shape (S, S, C), uint8).

        Never blocks much longer than `timeout_s`: stalls, errors and reconnect backoff are handled across calls
        (returning "timeout" meanwhile); after `reconnect_attempts` failed reconnects it raises CaptureError.
        """
        if not self._started:
            raise RuntimeError("GstCapture.read_into called before start() (or after stop())")
        if dest.shape != self._shape or dest.dtype != np.uint8:
            raise ValueError(f"dest must be a uint8 array of shape {self._shape}; got {dest.dtype} {dest.shape}")
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if self._ended:
                return CaptureResult("end", self._index, time.monotonic(), self._last_pts)
            now = time.monotonic()
            if self._pipeline is None:  # backing off between reconnect attempts
                if now >= self._next_attempt_at:
                    self._reconnect()
                    continue
                if now >= deadline:
                    return CaptureResult("timeout", self._index, now, None)
                time.sleep(min(deadline, self._next_attempt_at) - now)
                continue
            problem = self._poll_bus()
            if problem is not None:
                self._fail(problem)
                continue
            wait = max(0.0, min(deadline - now, _POLL_SLICE_S))
            sample = self._sink.try_pull_sample(int(wait * 1e9))
            if sample is not None:
                result = self._deliver(sample, dest)
                # A repeat is no new frame: Argus repeating its last frame for long is a stall like any other.
                if result.status == "frame" or not self._stalled(time.monotonic()):
                    return result
                continue
            if self._sink.is_eos():
                self._on_eos()
                continue
            now = time.monotonic()
            if self._stalled(now):
                continue  # torn down: the next turn backs off (returning "timeout" at the deadline) or reconnects
            if now >= deadline:
                return CaptureResult("timeout", self._index, now, None)

    # -- pipeline lifecycle --

    def _build(self) -> None:
        modules = _gst()
        try:
            pipeline = modules.Gst.parse_launch(self._description)
        except modules.GLib.Error as exc:
            raise MobileVLAError(
                f"capture source {self._spec.label!r}: GStreamer cannot build {self._description!r}: {exc.message}. "
                f"{_failure_hint(self._spec)}"
            ) from exc
        self._pipeline = pipeline
        self._finalizer = weakref.finalize(self, _set_null, pipeline)
        self._sink = pipeline.get_by_name(SINK_NAME)
        self._bus = pipeline.get_bus()
        self._pts_clock = None
        self._layout = None
        self._last_pts = None
        self._streaming = False

    def _teardown(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # sets the pipeline to NULL, once
            self._finalizer = None
        if self._mapper is not None:
            self._mapper.unmap()
        self._pipeline = self._sink = self._bus = None
        self._streaming = False

    def _start_failure(self, what: str) -> str:
        error = self._poll_bus() or what
        return f"capture source {self._spec.label!r} did not start: {error}. {_failure_hint(self._spec)}"

    def _reconnect(self) -> None:
        self._reconnects += 1
        log.warning("capture %s: reconnect attempt %d/%d (%d reconnects in total)", self._spec.label,
                    self._failed + 1, self._settings.reconnect_attempts, self._reconnects)
        self._build()
        self._run_started_at = time.monotonic()
        if self._pipeline.set_state(_gst().Gst.State.PLAYING) == _gst().Gst.StateChangeReturn.FAILURE:
            self._fail(self._poll_bus() or "the pipeline failed to restart")

    def _fail(self, problem: str, live_ends: int = 0) -> None:
        """Tear down; schedule the next attempt with exponential backoff, or raise when attempts are used up."""
        now = time.monotonic()
        self._live_ends = live_ends
        was_streaming = self._streaming
        self._teardown()
        if was_streaming:
            self._failing_since = self._last_frame_at
        elif self._failing_since is None:  # the very first start never delivered a frame
            self._failing_since = self._run_started_at
        else:
            self._failed_reconnects += 1
        # A file does not heal, and rebuilding it would replay frames the caller has seen: no reconnects.
        attempts = 0 if self._spec.kind == "file" else self._settings.reconnect_attempts
        failed = self._failed
        if failed >= attempts:
            assert self._failing_since is not None
            given_up = ("a file is not reopened" if self._spec.kind == "file" else
                        f"gave up after {failed} failed reconnect attempts over {now - self._failing_since:.1f} s")
            if live_ends > 1:
                given_up = (f"gave up after {failed} reconnects in a row that each ended the stream again within "
                            f"{self._settings.healthy_run_s:g} s")
            raise CaptureError(
                f"capture source {self._spec.label!r} failed: {problem}; {given_up} ({self._index} frames delivered "
                f"before). {_failure_hint(self._spec)}"
            )
        delay = min(self._settings.backoff_s * 2**failed, self._settings.backoff_max_s)
        self._next_attempt_at = now + delay
        log.warning("capture %s: %s (%d frames so far, %d failed reconnects); reconnecting in %.2f s",
                    self._spec.label, problem, self._index, failed, delay)

    @property
    def _failed(self) -> int:
        """Failed reconnect attempts in a row; a reconnect whose live run ended again soon is one of them."""
        return max(self._failed_reconnects, self._live_ends - 1)

    def _stalled(self, now: float) -> bool:
        """Fail the run when frames stopped (or never came); True when the pipeline was torn down."""
        if self._streaming:
            if now - self._last_frame_at <= self._settings.stall_timeout_s:
                return False
            self._fail(f"no new frame for {now - self._last_frame_at:.2f} s (stall timeout "
                       f"{self._settings.stall_timeout_s} s)")
        else:
            if now - self._run_started_at <= self._settings.first_frame_timeout_s:
                return False
            self._fail(f"no first frame within {self._settings.first_frame_timeout_s} s")
        return True

    def _poll_bus(self) -> str | None:
        """Drain the bus (nothing else does: no main loop) and return the first error, if any."""
        if self._bus is None:
            return None
        gst = _gst().Gst
        problem = None
        while (message := self._bus.pop()) is not None:
            if message.type == gst.MessageType.ERROR and problem is None:
                error, debug = message.parse_error()
                source = message.src.get_name() if message.src is not None else "pipeline"
                problem = f"GStreamer error from {source}: {error.message.rstrip('.')}"
                log.debug("capture %s: %s (%s)", self._spec.label, problem, debug)
            elif message.type == gst.MessageType.WARNING:
                warning, _ = message.parse_warning()
                log.warning("capture %s: GStreamer warning: %s", self._spec.label, warning.message)
        return problem

    def _on_eos(self) -> None:
        """A file, or a `gst:` source that prerolled (GStreamer: not live), ends the run (exit 0). A live source that
        ends is a failure: reconnect, then CaptureError (exit 2: systemd's Restart=on-failure restarts the service);
        a reconnect that ends again within healthy_run_s is a failed attempt, though it delivered frames."""
        if self._spec.kind == "file" or (self._spec.kind == "gst" and not self._live):
            if self._settings.file_loop and self._spec.kind == "file":
                gst = _gst().Gst
                if self._pipeline.seek_simple(gst.Format.TIME, gst.SeekFlags.FLUSH | gst.SeekFlags.KEY_UNIT, 0):
                    self._last_pts = None  # the file's timestamps start over
                    self._last_frame_at = time.monotonic()
                    return
                log.warning("capture %s: seeking back to the start failed; the file ends here", self._spec.label)
            log.info("capture %s: end of stream from a %s after %d frames: the source ends here", self._spec.label,
                     "file" if self._spec.kind == "file" else "non-live source (it prerolled)", self._index)
            self._ended = True
            self._teardown()
            return
        quick = time.monotonic() - self._run_started_at < self._settings.healthy_run_s
        ends = self._live_ends + 1 if quick else 1
        self._fail("the live source ended the stream" + (f" ({ends} times in a row)" if ends > 1 else ""), ends)

    # -- frames --

    def _deliver(self, sample: Any, dest: np.ndarray) -> CaptureResult:
        arrival = time.monotonic()
        buffer = sample.get_buffer()
        pts = buffer.pts
        pts_ns = None if pts == _CLOCK_TIME_NONE else int(pts)
        if pts_ns is not None and pts_ns == self._last_pts:
            return CaptureResult("repeat", self._index, self._capture_time(sample, pts_ns, arrival), pts_ns)
        copy_start = time.perf_counter()
        self._copy(sample, buffer, dest)
        copy_ms = (time.perf_counter() - copy_start) * 1e3
        self._last_pts = pts_ns
        self._index += 1
        self._last_frame_at = arrival
        if not self._streaming:
            if self._failing_since is not None:
                log.warning("capture %s: frames flow again after %.2f s and %d reconnects in total", self._spec.label,
                            arrival - self._failing_since, self._reconnects)
            self._streaming = True
            self._failed_reconnects = 0
            self._failing_since = None
        return CaptureResult("frame", self._index, self._capture_time(sample, pts_ns, arrival), pts_ns, copy_ms)

    def _copy(self, sample: Any, buffer: Any, dest: np.ndarray) -> None:
        """The one copy of a frame: mapped GstBuffer memory (no copy) -> dest, honouring row stride padding."""
        assert self._mapper is not None
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
        modules = _gst()
        meta = modules.GstVideo.buffer_get_video_meta(buffer)
        if meta is not None:
            offset, stride = int(meta.offset[0]), int(meta.stride[0])
        else:
            info = modules.GstVideo.VideoInfo.new_from_caps(sample.get_caps())
            offset, stride = int(info.offset[0]), int(info.stride[0])
        if stride < row or offset + stride * (size - 1) + row > nbytes:
            caps = sample.get_caps()
            raise CaptureError(
                f"capture source {self._spec.label!r} delivered a {nbytes}-byte buffer for a {size}x{size} "
                f"{self._pre.frame_format} frame (row stride {stride}, offset {offset}, needs at least "
                f"{offset + stride * (size - 1) + row} bytes); caps {caps.to_string() if caps else '?'}. The "
                "converter in front of the appsink did not deliver the negotiated frame size"
            )
        log.debug("capture %s: padded rows, stride %d for %d bytes of pixels", self._spec.label, stride, row)
        return nbytes, offset, stride

    def _capture_time(self, sample: Any, pts_ns: int | None, arrival: float) -> float:
        """Pipeline base time + running time of the PTS, in time.monotonic() terms, when that is meaningful."""
        if pts_ns is None:
            return arrival
        if self._pts_clock is None:
            self._pts_clock = self._clock_is_monotonic() and (self._live or _sink_mode(self._spec, self._settings)[0])
        if not self._pts_clock:
            return arrival
        gst = _gst().Gst
        running = sample.get_segment().to_running_time(gst.Format.TIME, pts_ns)
        if running == _CLOCK_TIME_NONE:
            return arrival
        captured = (self._pipeline.get_base_time() + running) / 1e9
        # Guard against sources whose timestamps are not running time (e.g. a non-live gst: source, a camera that
        # stamps its own epoch): a capture time in the future or long ago is wrong, the arrival time is not.
        if not arrival - 5.0 <= captured <= arrival + 0.005:
            return arrival
        return min(captured, arrival)

    def _clock_is_monotonic(self) -> bool:
        """GstSystemClock in MONOTONIC mode reads CLOCK_MONOTONIC, the clock behind time.monotonic() on Linux."""
        gst = _gst().Gst
        clock = self._pipeline.get_clock()
        return (isinstance(clock, gst.SystemClock) and clock.props.clock_type == gst.ClockType.MONOTONIC)
