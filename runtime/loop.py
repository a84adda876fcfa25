"""The on-robot loop: frame -> policy -> schedule -> safety -> sinks, with the deadman wired to every failure.

Per frame (`chunk0` and `ensemble` modes) the loop waits for the newest frame (copied straight into the backend's
input buffer), applies an instruction change if one arrived (tokenized once), runs the three parts, picks the
velocity, passes it through the safety layer and hands the command to the sinks (which never block). In `async`
mode the loop only hands each chunk over, and a control thread publishes at a fixed rate.

Zero commands (the deadman) go out when the newest frame is older than `frame_deadline_s`, when a command would
come from a frame older than `max_latency_s` (inference overran), when no instruction is set, when a sink recovers,
and on every way out of `run()`: end of source, a signal, the memory guard, an exception (in the loop or in the
async control thread). A non-finite policy output is a zero with reason `non_finite_output` (the safety layer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.benchmark import StageRecorder
from runtime.config import RuntimeConfig
from runtime.control import InstructionBox
from runtime.diagnostics import LoopStatus
from runtime.errors import MobileVLAError
from runtime.notify import SystemdNotifier
from runtime.pipeline import PolicyPipeline, StepResult
from runtime.safety import (
    FAULT,
    NO_INSTRUCTION,
    NON_FINITE_OUTPUT,
    OVERRUN,
    SHUTDOWN,
    SINK_RECOVERED,
    STALE_FRAME,
    SafetyLayer,
)
from runtime.schedule import EnsembleScheduler, LatestChunk
from runtime.sinks.base import VelocityCommand
from runtime.sinks.fanout import SinkSet
from runtime.sources.base import CaptureResult, FrameSource
from runtime.sources.replay import ReplaySource

log = logging.getLogger("runtime.loop")

def loop_stages(frame_parts: tuple[str, ...]) -> tuple[str, ...]:
    """Per-frame benchmark stages: the bundle's per-frame parts between capture and schedule (docs/runtime.md,
    "runtime --benchmark", says what each covers)."""
    return ("capture_wait", "frame_copy", *frame_parts, "schedule", "publish", "host", "total", "latency")
@dataclass
class LoopResult:
    frames: int  # frames run through the policy
    timed_frames: int  # after warm-up
    wall_s: float  # seconds after warm-up
    exit_reason: str
    exit_code: int
    stops: dict[str, int] = field(default_factory=dict)  # zero commands per reason
    skipped_episodes: tuple[tuple[str, str], ...] = ()  # replay: (episode, why) left out


def zero_summary(stops: dict[str, int]) -> str:
    """`3 zero commands (stale frame 2, non_finite_output 1)`: the count by reason, for STATUS and the log."""
    total = sum(stops.values())
    detail = ", ".join(f"{reason} {count}" for reason, count in sorted(stops.items()))
    return f"{total} zero commands" + (f" ({detail})" if detail else "")


OnResult = Callable[[CaptureResult, StepResult, VelocityCommand | None, str], None]  # ..., instruction


class RuntimeLoop:
    def __init__(self, config: RuntimeConfig, pipeline: PolicyPipeline, source: FrameSource, sinks: SinkSet,
                 box: InstructionBox, recorder: StageRecorder | None = None, warmup: int = 0,
                 frame_limit: int | None = None, on_result: OnResult | None = None,
                 replay_instructions: bool = False, notifier: SystemdNotifier | None = None,
                 health: Callable[[], str] | None = None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.source = source
        self.sinks = sinks
        self.box = box
        self.recorder = recorder
        self.warmup = warmup
        self.frame_limit = frame_limit
        self.on_result = on_result
        self.replay_instructions = replay_instructions  # h5 replay: each episode's own instruction wins
        self.notifier = notifier  # systemd: READY after the first inference, WATCHDOG only while frames flow
        self.health = health  # a one-line memory summary for systemd's STATUS
        self._status_frames = 0
        self._status_since = time.monotonic()
        policy = pipeline.bundle.manifest.policy
        plan = pipeline.bundle.plan
        dim = plan.final.outputs[0].shape[-1]  # velocity axes (`actions`; no gripper)
        self._frame_parts = plan.frame_parts
        self.safety = SafetyLayer(config.safety, dim)
        schedule = config.schedule
        self.ensemble = EnsembleScheduler(policy.chunk, dim, schedule.ensemble_decay) \
            if schedule.mode == "ensemble" else None
        self.latest = LatestChunk(policy.chunk, dim, schedule.step_s) if schedule.mode == "async" else None
        self._stop = threading.Event()
        self._exit_reason = ""
        self._exit_code = 0
        self._zero_reason = SHUTDOWN
        self._timings = dict.fromkeys(loop_stages(plan.frame_parts), 0.0)
        self._has_instruction = True
        self._sink_recovered = threading.Event()
        self._frames_run = 0  # for status(): written by the loop thread only
        self._last_frame_at: float | None = None
        self._last_latency_ms: float | None = None

    # -- stopping -------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str, code: int = 0, zero_reason: str = SHUTDOWN) -> None:
        """Stop after the current frame, whose command is then not published (signal handlers, the memory guard,
        other threads); the zero command for `zero_reason` goes out first."""
        if not self._stop.is_set():
            self._exit_reason, self._exit_code, self._zero_reason = reason, code, zero_reason
            self._stop.set()

    def on_sink_recovered(self, name: str) -> None:
        """A sink works again (called on its thread): the next command is a zero for every sink, then ramp up."""
        log.warning("sink %s recovered; restarting from zero velocity", name)
        self._sink_recovered.set()

    def status(self) -> LoopStatus:
        """What the loop is doing now, for `/diagnostics` (read from another thread: plain attribute reads)."""
        return LoopStatus(self._frames_run, self._last_frame_at, self._last_latency_ms, self.safety.holding,
                          dict(self.safety.stops), self.pipeline.backend.name, self.source.description,
                          self.pipeline.instruction if self._has_instruction else None)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        frames = 0
        started = time.perf_counter()
        control = None
        if self.latest is not None:
            control = threading.Thread(target=self._control_loop, name="control", daemon=True)
            control.start()
        last_frame = time.monotonic()
        wait = min(self.config.safety.frame_deadline_s / 2, 0.1)
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                got = self.source.read_into(self.pipeline.frame, wait)
                t1 = time.perf_counter()
                if got.status == "end":
                    self.request_stop("end of source")
                    break
                if got.status != "frame":
                    if time.monotonic() - last_frame > self.config.safety.frame_deadline_s:
                        self._deadman(STALE_FRAME)
                    continue
                last_frame = self._last_frame_at = got.capture_time
                if not self._frame(got, t0, t1):
                    continue
                frames += 1
                self._frames_run = frames
                if frames == self.warmup:  # warm-up done: time from here
                    started = time.perf_counter()
                    if self.recorder is not None:
                        self.recorder.clear()
                if self.frame_limit is not None and frames >= self.frame_limit:
                    self.request_stop("frame limit")
        except BaseException as exc:
            self.request_stop(f"{type(exc).__name__}: {exc}", 1, FAULT)
            raise
        finally:
            self._stop.set()
            if self.notifier is not None:
                self.notifier.stopping(self._exit_reason or "exception")
            if control is not None:
                control.join(timeout=1.0)
            final = self.safety.stop(self._zero_reason, time.monotonic())
            if not self.sinks.publish_final(final):
                log.error("the final zero command did not reach every sink within its timeout")
        wall = time.perf_counter() - started
        timed = max(frames - self.warmup, 0) if self.recorder is not None else frames
        skipped = tuple(self.source.skipped) if isinstance(self.source, ReplaySource) else ()
        return LoopResult(frames, timed, wall, self._exit_reason or "stopped", self._exit_code, dict(self.safety.stops),
                          skipped)

    def _deadman(self, reason: str) -> None:
        if self.latest is not None:
            self.latest.clear()  # the control thread stops on its own when no chunk covers now
            return
        self.sinks.publish(self.safety.stop(reason, time.monotonic()))

    def _apply_instruction(self, got: CaptureResult) -> None:
        if self.replay_instructions and got.new_episode:
            self.box.offer(got.instruction or self.pipeline.bundle.manifest.prompt.default_instruction, got.episode,
                           logging.DEBUG)
        changed, wanted = self.box.take_change()
        if not changed:
            return
        if wanted is None:
            self._has_instruction = False
            return
        if wanted == self.pipeline.instruction:
            self._has_instruction = True
            return
        try:
            self.pipeline.set_instruction(wanted)
        except MobileVLAError as exc:
            log.warning("instruction %r rejected, keeping %r: %s", wanted, self.pipeline.instruction, exc)
            return
        self._has_instruction = True

    def _frame(self, got: CaptureResult, t0: float, t1: float) -> bool:
        """One captured frame; False when the policy did not run (no instruction)."""
        if got.new_episode:
            self.pipeline.reset()
            if self.ensemble is not None:
                self.ensemble.reset()
        self._apply_instruction(got)
        if not self._has_instruction:
            self._deadman(NO_INSTRUCTION)
            return False
        result = self.pipeline.step()
        t2 = time.perf_counter()
        command = self._schedule(result, got.capture_time)
        t3 = time.perf_counter()
        if command is not None and not self._stop.is_set():
            self.sinks.publish(command)
        t4 = time.perf_counter()
        self._record(got, result, t0, t1, t2, t3, t4)
        if self.notifier is not None:
            self._notify()
        if self.on_result is not None:
            self.on_result(got, result, command, self.pipeline.instruction)
        return True

    def _notify(self) -> None:
        """systemd: the loop itself proves it is alive, frame by frame (never a side thread)."""
        assert self.notifier is not None
        now = time.monotonic()
        self._status_frames += 1
        if not self.notifier.ready_sent:
            self.notifier.ready(f"running {self.pipeline.backend.name} on {self.source.description}")
        self.notifier.heartbeat(now)
        if self.notifier.status_due(now):
            fps = self._status_frames / max(now - self._status_since, 1e-9)
            memory = f", {self.health()}" if self.health is not None else ""
            self.notifier.send(f"STATUS={fps:.1f} FPS{memory}, {zero_summary(self.safety.stops)}")
            self._status_frames, self._status_since = 0, now

    def _schedule(self, result: StepResult, capture_time: float) -> VelocityCommand | None:
        if self.latest is not None:
            self.latest.put(result.chunk, capture_time)
            return None
        now = time.monotonic()
        if self.ensemble is not None:
            if not np.isfinite(result.chunk).all():
                self.ensemble.reset()  # a non-finite chunk must not poison the next frames' average
                return self.safety.stop(NON_FINITE_OUTPUT, now)
            velocity = self.ensemble.push(result.chunk)
        else:
            velocity = result.velocity
        latency = now - capture_time
        if self._sink_recovered.is_set():
            self._sink_recovered.clear()
            return self.safety.stop(SINK_RECOVERED, now)
        self._last_latency_ms = latency * 1e3
        if latency > self.config.safety.max_latency_s:
            return self.safety.stop(OVERRUN, now)
        return self.safety.command(velocity, now, latency * 1e3)

    def _record(self, got: CaptureResult, result: StepResult, t0: float, t1: float, t2: float, t3: float,
                t4: float) -> None:
        if self.recorder is None:
            return
        timings = self._timings
        model = result.timings_ms
        timings["capture_wait"] = (t1 - t0) * 1e3 - got.copy_ms
        timings["frame_copy"] = got.copy_ms
        in_model = 0.0
        for name in self._frame_parts:
            timings[name] = model[name]
            in_model += model[name]
        timings["schedule"] = (t3 - t2) * 1e3
        timings["publish"] = (t4 - t3) * 1e3
        timings["total"] = (t4 - t0) * 1e3
        timings["host"] = timings["total"] - timings["capture_wait"] - in_model
        timings["latency"] = (time.monotonic() - got.capture_time) * 1e3
        self.recorder.record(timings)

    # -- async mode -----------------------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        """The async control thread; an exception in it stops the run (the loop then sends the zero)."""
        try:
            self._publish_at_rate()
        except Exception as exc:
            log.exception("async control loop failed")
            self.request_stop(f"control loop failed: {type(exc).__name__}: {exc}", 1, FAULT)

    def _publish_at_rate(self) -> None:
        """Publish at `rate_hz` the element of the newest chunk that belongs to "now" (async mode)."""
        assert self.latest is not None
        period = 1.0 / self.config.schedule.rate_hz
        deadline = self.config.safety.max_latency_s
        next_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            velocity, capture_time = self.latest.at(now)
            if self._sink_recovered.is_set():
                self._sink_recovered.clear()
                command = self.safety.stop(SINK_RECOVERED, now)
            elif not self._has_instruction:
                command = self.safety.stop(NO_INSTRUCTION, now)
            elif velocity is None or now - capture_time > deadline:
                command = self.safety.stop(STALE_FRAME, now)
            else:
                self._last_latency_ms = (now - capture_time) * 1e3
                command = self.safety.command(velocity, now, self._last_latency_ms)
            self.sinks.publish(command)
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_tick = time.monotonic()  # overran a tick: do not try to catch up with a burst

