"""The systemd notify protocol (sd_notify), spoken directly on `$NOTIFY_SOCKET`: no extra dependency.

The service is `Type=notify` with `WatchdogSec=`. The runtime sends:
- `READY=1` after its first successful inference (not at start-up: a unit is only "started" once it drives);
- `WATCHDOG=1` from the main loop, and only when a frame went through the policy since the last ping. A loop stuck
  in the backend, or starved by a stalled camera, stops pinging, so systemd kills and restarts it;
- `STATUS=` every few seconds: FPS, memory, zero commands;
- `STOPPING=1` when it begins to shut down (before the final zero command).

Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("runtime.notify")
STATUS_EVERY_S = 5.0


def watchdog_interval(environ: dict[str, str] | os._Environ[str] = os.environ) -> float | None:
    """Seconds between pings: half of `WatchdogSec` (`$WATCHDOG_USEC`), or None when no watchdog is set for us."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; the systemd watchdog is not pinged", usec)
        return None


class SystemdNotifier:
    def __init__(self, address: str | None = None, interval_s: float | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.interval_s = watchdog_interval() if interval_s is None else interval_s
        self._socket: socket.socket | None = None
        self._address = ""
        if address:
            # A leading "@" names a socket in the abstract namespace (sd_notify(3)).
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        self._last_ping = float("-inf")
        self._last_status = float("-inf")
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, message: str) -> bool:
        """One datagram; a failure is logged, never raised (systemd going away must not stop the robot's loop)."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message.split("=")[0], exc)
            return False
        return True

    def ready(self, status: str) -> None:
        if not self.ready_sent:
            self.ready_sent = self.send(f"READY=1\nSTATUS={status}") or not self.enabled
            log.debug("systemd: ready (%s)", status)

    def heartbeat(self, now: float) -> bool:
        """Call after every frame that went through the policy; pings at most every `interval_s`."""
        if self.interval_s is None or now - self._last_ping < self.interval_s:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def status_due(self, now: float) -> bool:
        if not self.enabled or now - self._last_status < STATUS_EVERY_S:
            return False
        self._last_status = now
        return True

    def stopping(self, reason: str) -> None:
        self.send(f"STOPPING=1\nSTATUS=stopping: {reason}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
