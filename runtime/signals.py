"""Every catchable signal that would end the process ends the loop instead, so the zero command goes out first.

A signal's default action kills Python without running `finally` blocks: the robot would keep the last velocity it
got. While the loop runs, each terminating signal (SIGTERM, SIGINT, SIGHUP from an ssh disconnect, SIGQUIT,
SIGUSR1/2, SIGALRM, ... and the real-time signals) asks the loop to stop after the current frame; the loop then
publishes the zero to every sink and the process exits. SIGTERM and SIGINT are the normal ways to stop (systemd,
Ctrl-C): exit code 0. Any other signal is unexpected: exit code 128 + its number, as a shell reports a death by it,
so systemd's `Restart=on-failure` restarts the service. SIGKILL and power loss cannot be caught: the receiver's own
command timeout must stop the robot then (docs/reliability.md).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("runtime.signals")

GRACEFUL = (signal.SIGTERM, signal.SIGINT)
# Default action "terminate" or "core dump", sent from outside the process. Left out: SIGKILL/SIGSTOP (cannot be
# caught), SIGPIPE (Python ignores it: a write to a closed pipe raises instead), and SIGSEGV/SIGBUS/SIGILL/SIGFPE/
# SIGABRT/SIGTRAP/SIGSYS (raised by the faulting thread itself; a Python handler would never get to run).
_NAMES = ("SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGXFSZ", "SIGIO",
          "SIGPWR", "SIGSTKFLT")


def terminating_signals() -> tuple[int, ...]:
    """The catchable signals whose default action ends the process, on this platform."""
    named = [int(getattr(signal, name)) for name in _NAMES if hasattr(signal, name)]
    realtime: list[int] = []
    if hasattr(signal, "SIGRTMIN"):
        valid = {int(s) for s in signal.valid_signals()}
        realtime = [n for n in range(int(signal.SIGRTMIN), int(signal.SIGRTMAX) + 1) if n in valid]
    return (*(int(s) for s in GRACEFUL), *named, *realtime)


def exit_code(number: int) -> int:
    """0 for a requested stop (SIGTERM, SIGINT), else 128 + the signal number."""
    return 0 if number in GRACEFUL else 128 + number


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


StopRequest = Callable[[str, int], None]  # (reason, exit code)


@contextmanager
def stop_on_signals(request_stop: StopRequest) -> Iterator[None]:
    """While inside, every terminating signal calls `request_stop(reason, exit code)` instead of killing us."""
    def handler(number: int, frame: FrameType | None) -> None:
        name = signal_name(number)
        if number not in GRACEFUL:
            log.warning("%s received: stopping the robot and exiting with code %d", name, exit_code(number))
        request_stop(f"signal {name}", exit_code(number))

    previous = {}
    for sig in terminating_signals():
        try:
            previous[sig] = signal.signal(sig, handler)
        except (OSError, ValueError) as exc:  # a signal this kernel reserves (e.g. for its thread library)
            log.debug("cannot handle %s: %s", sig, exc)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
