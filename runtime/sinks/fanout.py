"""The fan-out to the sinks.

`SinkSet` runs one worker thread per sink with a latest-value mailbox: `publish` only swaps a reference, so a slow
or broken sink never delays inference. A newer command replaces one not yet sent ("dropped"). A failed send is
counted and logged (rate-limited); the worker re-opens the sink with backoff (0.5 s doubling to 5 s) and, as soon
as that works, sends a zero (`stop` true, reason "sink recovered", the seq of the newest command that was not
delivered) before anything else; once the zero is out, `on_recovered(name)` (called on that sink's worker thread)
lets the safety layer ramp up again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from runtime.errors import MobileVLAError

if TYPE_CHECKING:
    pass
from runtime.sinks.base import RECOVERED_REASON, SHUTDOWN_REASON, Sink, VelocityCommand

log = logging.getLogger("runtime.sinks")


@dataclass
class SinkStats:
    sent: int = 0
    failed: int = 0  # failed sends
    dropped: int = 0  # commands replaced by a newer one before they were sent (or never sent before close)
    reconnects: int = 0  # successful re-opens
    reopen_failed: int = 0
    last_error: str = ""
    healthy: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


LOG_EVERY_S = 5.0  # a failing sink logs its first failure, then at most one summary per this many seconds


@dataclass
class _Lane:
    """One sink, its mailbox and its counters. `lock` guards every field the worker and the publisher share."""

    sink: Sink
    lock: threading.Lock = field(default_factory=threading.Lock)
    work: threading.Condition = field(init=False)  # signalled when a command arrives or the set closes
    done: threading.Condition = field(init=False)  # signalled when the final command was sent
    pending: VelocityCommand | None = None
    final: VelocityCommand | None = None  # publish_final's command, and whether it went out
    final_sent: bool = False
    stats: SinkStats = field(default_factory=SinkStats)
    closing: bool = False
    urgent: bool = False  # publish_final: retry a broken sink now instead of after its backoff
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.work = threading.Condition(self.lock)
        self.done = threading.Condition(self.lock)

    def offer(self, command: VelocityCommand) -> None:
        """Put a command in the mailbox (caller holds the lock); an unsent older one is replaced and counted."""
        if self.pending is not None:
            self.stats.dropped += 1
        self.pending = command
        self.work.notify()


class SinkSet:
    """Fan-out to sinks; one worker thread per sink, so `publish` never blocks on I/O."""

    def __init__(self, sinks: list[Sink], on_recovered: Callable[[str], None] | None = None, *,
                 backoff_s: tuple[float, float] = (0.5, 5.0)) -> None:
        names = [s.name for s in sinks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise MobileVLAError(f"sink {twice[0]} is configured twice; give each sink once")
        self._lanes = [_Lane(s) for s in sinks]
        # Public and read at call time, so it can be set after construction (the loop that owns it needs the set).
        # Called on the recovered sink's worker thread.
        self.on_recovered = on_recovered
        self._backoff_s = backoff_s
        self._started = False
        self._last: VelocityCommand | None = None  # the newest command published
        self._final_published = False

    @property
    def names(self) -> list[str]:
        return [lane.sink.name for lane in self._lanes]

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            worker = _Worker(lane, self._backoff_s, self._notify_recovered)
            lane.thread = threading.Thread(target=worker.run, name=f"sink {lane.sink.name}", daemon=True)
            lane.thread.start()

    def publish(self, command: VelocityCommand) -> None:
        """Hand the command to every sink's mailbox: a reference swap under a lock no send ever holds.

        After `publish_final` nothing replaces the final command: it stays the last word to the robot.
        """
        if self._final_published:
            return
        self._last = command
        for lane in self._lanes:
            with lane.lock:
                lane.offer(command)

    def publish_final(self, command: VelocityCommand, timeout_s: float = 0.5) -> bool:
        """Publish (e.g. the zero before exit) and wait until every sink sent it; False when one did not in time.

        Later `publish` calls are ignored, so a thread that publishes late cannot replace it.
        """
        self._final_published, self._last = True, command
        for lane in self._lanes:
            with lane.lock:
                lane.final, lane.final_sent, lane.urgent = command, False, True
                lane.offer(command)
        deadline = time.monotonic() + timeout_s
        all_sent = True
        for lane in self._lanes:
            with lane.lock:
                while not lane.final_sent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._started:
                        log.warning("sink %s: the final command (seq %d, %s) was not sent within %.2f s; "
                                    "last error: %s", lane.sink.name, command.seq, command.reason or "no reason",
                                    timeout_s, lane.stats.last_error or "none")
                        all_sent = False
                        break
                    lane.done.wait(remaining)
        return all_sent

    def close(self) -> None:
        """Stop the workers (an unsent command is counted as dropped) and close the sinks.

        A set that published a moving command but never a final one (the process is leaving by a path that skipped
        the loop's own zero) sends a zero first: whatever ends the runtime, the robot's last command is a stop.
        """
        if self._started and self._last is not None and not self._final_published and not self._last.stop:
            log.warning("sinks closed without a final zero command: sending one (seq %d)", self._last.seq)
            self.publish_final(self._last.as_stop(SHUTDOWN_REASON))
        for lane in self._lanes:
            with lane.lock:
                lane.closing = True
                lane.work.notify()
        for lane in self._lanes:
            if lane.thread is not None:
                # Sends are bounded (serial write timeout, non-blocking UDP); stdout into a stalled pipe is not.
                lane.thread.join(timeout=2.0)
                if lane.thread.is_alive():
                    log.warning("sink %s: worker still blocked in a send after 2 s; closing the sink under it",
                                lane.sink.name)
            with lane.lock:
                if lane.pending is not None:
                    lane.stats.dropped += 1
                    lane.pending = None
            try:
                lane.sink.close()
            except Exception as exc:  # the other sinks must be closed whatever this one raises
                log.warning("sink %s: close failed: %s", lane.sink.name, exc)
        self._started = False

    def stats(self) -> dict[str, SinkStats]:
        out = {}
        for lane in self._lanes:
            with lane.lock:
                out[lane.sink.name] = replace(lane.stats)
        return out

    def _notify_recovered(self, name: str) -> None:
        if self.on_recovered is not None:
            self.on_recovered(name)

    def __enter__(self) -> SinkSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Worker:
    """One sink's thread: take the newest command, send it; on failure re-open with backoff, then send a zero."""

    def __init__(self, lane: _Lane, backoff_s: tuple[float, float], on_recovered: Callable[[str], None]) -> None:
        self.lane = lane
        self.name = lane.sink.name
        self.backoff_min, self.backoff_max = backoff_s
        self.backoff = self.backoff_min
        self.on_recovered = on_recovered
        self.broken = False  # the last send or re-open failed: re-open before sending again
        self.needs_zero = False  # re-opened after a failure: the next thing sent must be a zero
        self.retry_at = 0.0
        self.last_taken: VelocityCommand | None = None  # the command whose send failed, when broken
        self.unlogged = 0
        self.logged_at = -math.inf

    def run(self) -> None:
        while True:
            if self.broken:
                if not self.wait_for_retry():
                    return
                self.try_reopen()
                continue
            command = self.take()
            if command is None:
                return
            self.send(command)

    def wait_for_retry(self) -> bool:
        lane = self.lane
        with lane.lock:
            while not lane.closing and not lane.urgent and time.monotonic() < self.retry_at:
                lane.work.wait(self.retry_at - time.monotonic())
            lane.urgent = False
            return not lane.closing

    def try_reopen(self) -> None:
        try:
            self.lane.sink.reopen()
        except Exception as exc:
            with self.lane.lock:
                self.lane.stats.reopen_failed += 1
            self.note_failure("re-open", exc)
            self.backoff = min(self.backoff * 2, self.backoff_max)
            self.retry_at = time.monotonic() + self.backoff
            return
        with self.lane.lock:
            self.lane.stats.reconnects += 1
        self.broken = False
        self.needs_zero = True

    def take(self) -> VelocityCommand | None:
        """The newest command; right after a re-open with nothing new, the one whose send failed (for its zero)."""
        lane = self.lane
        with lane.lock:
            while lane.pending is None and not lane.closing and not self.needs_zero:
                lane.work.wait()
            if lane.closing:
                return None
            if lane.pending is not None:
                self.last_taken, lane.pending = lane.pending, None
        return self.last_taken

    def send(self, command: VelocityCommand) -> None:
        lane = self.lane
        # After a failure the robot may still hold the last velocity it got: send a zero before anything fresh
        # (a stop keeps its own reason, e.g. "shutdown").
        to_send = command.as_stop(RECOVERED_REASON) if self.needs_zero and not command.stop else command
        try:
            lane.sink.send(to_send)
        except Exception as exc:  # OSError/SinkError expected; nothing may kill the worker
            with lane.lock:
                lane.stats.failed += 1
            self.note_failure("send", exc)
            self.broken = True
            self.retry_at = time.monotonic() + self.backoff
            return
        with lane.lock:
            lane.stats.sent += 1
            recovered = not lane.stats.healthy
            lane.stats.healthy = True
            lane.urgent = False
            if command is lane.final:
                lane.final_sent = True
                lane.done.notify_all()
            last_error = lane.stats.last_error
        self.backoff = self.backoff_min
        self.needs_zero = False
        if recovered:
            log.info("sink %s: recovered, sent a zero first (last error: %s)", self.name, last_error)
            self.unlogged, self.logged_at = 0, -math.inf
            try:
                self.on_recovered(self.name)
            except Exception:
                log.exception("sink %s: on_recovered callback failed", self.name)

    def note_failure(self, what: str, exc: BaseException) -> None:
        error = f"{what}: {type(exc).__name__}: {exc}"
        with self.lane.lock:
            first = self.lane.stats.healthy
            self.lane.stats.last_error = error
            self.lane.stats.healthy = False
        self.unlogged += 1
        now = time.monotonic()
        if first:
            log.warning("sink %s: %s; its commands are dropped until it works again (retrying with backoff)",
                        self.name, error)
        elif now - self.logged_at >= LOG_EVERY_S:
            log.warning("sink %s: still failing (%d failures since the last report); last: %s",
                        self.name, self.unlogged, error)
        else:
            return
        self.unlogged, self.logged_at = 0, now
