"""Which health source runs (`choose_reader`): `auto` tries jtop, then tegrastats, then proc, and says why it
skipped each.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from runtime.config import MONITOR_SOURCES
from runtime.errors import MobileVLAError
from runtime.health.base import Reader
from runtime.health.jtop import JTOP_SOCKET, JtopReader
from runtime.health.proc import ProcReader
from runtime.health.tegrastats import TegrastatsReader

log = logging.getLogger("runtime.monitor")


def choose_reader(source: str, interval_s: float = 1.0, root: Path = Path("/")) -> Reader:
    """The reader for `source`; `auto` takes jtop (service answering), else tegrastats (on PATH), else proc.

    An explicitly requested source that is not available is a user error (MobileVLAError), not a silent fallback.
    """
    if source not in MONITOR_SOURCES:
        raise MobileVLAError(f"monitor source {source!r} is unknown; expected one of {', '.join(MONITOR_SOURCES)}")
    skipped: list[str] = []
    if source in ("auto", "jtop"):
        if importlib.util.find_spec("jtop") is None:
            skipped.append("jtop not installed")
        elif not (root / JTOP_SOCKET).exists():
            skipped.append(f"jtop service socket /{JTOP_SOCKET} absent")
        else:
            try:
                return JtopReader(interval_s, why=_why(skipped), root=root)
            except Exception as exc:  # JtopException and friends: service down, permissions, version mismatch
                skipped.append(f"jtop service did not answer ({exc})")
        if source == "jtop":
            raise MobileVLAError(f"monitor source jtop: {skipped[-1]}; install jetson-stats on the host "
                                 "(`sudo pip3 install -U jetson-stats`, then reboot), in a container mount "
                                 "/run/jtop.sock, or set monitor.source: auto in the config")
    if source in ("auto", "tegrastats"):
        executable = shutil.which("tegrastats")
        if executable is None:
            skipped.append("tegrastats not on PATH")
        else:
            try:
                return TegrastatsReader(executable, interval_s, why=_why(skipped), root=root)
            except OSError as exc:
                skipped.append(f"tegrastats could not start ({exc})")
        if source == "tegrastats":
            raise MobileVLAError(f"monitor source tegrastats: {skipped[-1]}; it ships with L4T in /usr/bin "
                                 "(in a container, mount it, or set monitor.source: proc in the config)")
    return ProcReader(why=_why(skipped), root=root)


def _why(skipped: list[str]) -> str:
    return "; ".join(skipped) if skipped else "first choice"
