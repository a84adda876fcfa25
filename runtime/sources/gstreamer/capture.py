"""One GStreamer capture (`GstCapture`): `read_into` copies the newest frame into the caller's array.

Buffers are mapped with `gst_buffer_map` through ctypes and copied exactly once, into the caller's array. Stalls,
pipeline errors and a live source's end of stream are repaired by tearing the pipeline down and rebuilding it with
exponential backoff; `read_into` never blocks much longer than its timeout, because the caller's deadman (stop the
robot when frames are late) depends on it. PyGObject and GStreamer are imported lazily: `runtime` imports on
machines without them.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

import numpy as np

from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.host import is_jetson
from runtime.preprocess import Preprocessing
from runtime.sources.base import CaptureError, CaptureResult
from runtime.sources.gstreamer.buffer import FrameCopier, gst_modules, loaded_gst
from runtime.sources.gstreamer.pipeline import (
    SINK_NAME,
    check_elements,
    check_source,
    failure_hint,
    pipeline_description,
    sink_mode,
)
from runtime.sources.gstreamer.v4l2 import choose_for, probe_caps
from runtime.sources.spec import CaptureSpec, V4l2Spec, parse_capture

log = logging.getLogger("runtime.capture")
_POLL_SLICE_S = 0.02  # longest single wait inside read_into: the bus and the stall clock are checked this often
_CLOCK_TIME_NONE = 2**64 - 1  # GST_CLOCK_TIME_NONE


def _set_null(pipeline: Any) -> None:
    """Finaliser: a pipeline left in PLAYING keeps the camera open (and can wedge nvargus-daemon)."""
    gst = loaded_gst()
    if gst is not None:
        pipeline.set_state(gst.Gst.State.NULL)


class GstCapture:
    """One capture source. `read_into` copies the newest frame into the caller's array (a context manager)."""

    def __init__(self, spec: str | CaptureSpec, pre: Preprocessing, settings: SourceConfig) -> None:
        self._spec = parse_capture(spec) if isinstance(spec, str) else spec
        self._pre = pre
        self._settings = settings
        self._hardware = is_jetson()  # network streams: NVDEC + VIC there, software decoders elsewhere
        self._description = pipeline_description(self._spec, pre, settings, self._hardware)
        self._shape = (pre.image_size, pre.image_size, pre.channels)
        self._pipeline: Any = None
        self._sink: Any = None
        self._bus: Any = None
        self._finalizer: weakref.finalize | None = None
        self._copier: FrameCopier | None = None
        self._started = False
        self._live = True  # learnt at start(): a non-live pipeline prerolls
        self._pts_clock: bool | None = None  # per pipeline run: may PTS + base time be read as time.monotonic()?
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
        check_source(self._spec)
        modules = gst_modules()
        self._ended = False
        self._failed_reconnects = 0
        self._failing_since = None
        choice = None
        if isinstance(self._spec, V4l2Spec):  # raw, MJPEG or H.264: from the camera's caps, probed now
            choice = choose_for(self._spec, self._settings, probe_caps(self._spec.device, modules.Gst))
            self._description = pipeline_description(self._spec, self._pre, self._settings, self._hardware, choice)
        check_elements(self._spec, self._settings, modules.Gst, self._hardware, choice)
        self._copier = FrameCopier(self._shape, self._spec.label, self._pre.frame_format)
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
            gst = gst_modules().Gst
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
        modules = gst_modules()
        try:
            pipeline = modules.Gst.parse_launch(self._description)
        except modules.GLib.Error as exc:
            raise MobileVLAError(
                f"capture source {self._spec.label!r}: GStreamer cannot build {self._description!r}: {exc.message}. "
                f"{failure_hint(self._spec)}"
            ) from exc
        self._pipeline = pipeline
        self._finalizer = weakref.finalize(self, _set_null, pipeline)
        self._sink = pipeline.get_by_name(SINK_NAME)
        self._bus = pipeline.get_bus()
        self._pts_clock = None
        if self._copier is not None:
            self._copier.new_run()
        self._last_pts = None
        self._streaming = False

    def _teardown(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # sets the pipeline to NULL, once
            self._finalizer = None
        if self._copier is not None:
            self._copier.release()
        self._pipeline = self._sink = self._bus = None
        self._streaming = False

    def _start_failure(self, what: str) -> str:
        error = self._poll_bus() or what
        return f"capture source {self._spec.label!r} did not start: {error}. {failure_hint(self._spec)}"

    def _reconnect(self) -> None:
        self._reconnects += 1
        log.warning("capture %s: reconnect attempt %d/%d (%d reconnects in total)", self._spec.label,
                    self._failed + 1, self._settings.reconnect_attempts, self._reconnects)
        self._build()
        self._run_started_at = time.monotonic()
        if self._pipeline.set_state(gst_modules().Gst.State.PLAYING) == gst_modules().Gst.StateChangeReturn.FAILURE:
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
                f"before). {failure_hint(self._spec)}"
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
        gst = gst_modules().Gst
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
                gst = gst_modules().Gst
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
        assert self._copier is not None
        self._copier.copy(sample, buffer, dest)
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

    def _capture_time(self, sample: Any, pts_ns: int | None, arrival: float) -> float:
        """Pipeline base time + running time of the PTS, in time.monotonic() terms, when that is meaningful."""
        if pts_ns is None:
            return arrival
        if self._pts_clock is None:
            self._pts_clock = self._clock_is_monotonic() and (self._live or sink_mode(self._spec, self._settings)[0])
        if not self._pts_clock:
            return arrival
        gst = gst_modules().Gst
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
        gst = gst_modules().Gst
        clock = self._pipeline.get_clock()
        return (isinstance(clock, gst.SystemClock) and clock.props.clock_type == gst.ClockType.MONOTONIC)
