"""The `jtop` source: jetson-stats' client, when the package imports and its service answers on /run/jtop.sock (in a
container: mount the socket). Temperatures, board power, GPU load and RAM as jtop reports them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from runtime.health.base import IGNORED_ZONES, OFFLINE_TEMP_C, HealthReading, ReaderError
from runtime.host import available_mb, process_memory_mb, read_meminfo

log = logging.getLogger("runtime.monitor")
JTOP_SOCKET = "run/jtop.sock"  # under the root ("/"): jetson-stats' service socket


class JtopReader:
    """jetson-stats' Python client (jtop 4+); needs its service (`jtop.service`, socket /run/jtop.sock)."""

    name = "jtop"

    def __init__(self, interval_s: float, why: str = "requested", root: Path = Path("/")) -> None:
        from jtop import jtop

        self.why = why
        self._root = root
        self._jetson: Any = jtop(interval=max(0.5, interval_s))
        self._jetson.start()  # raises JtopException when the service does not answer

    def read(self) -> HealthReading:
        jetson = self._jetson
        if not jetson.ok(spin=True):
            raise ReaderError("jtop lost its connection to the jetson_stats service")
        try:
            ram, swap = jetson.memory["RAM"], jetson.memory["SWAP"]  # kB
            temps = {str(name).lower(): float(t["temp"]) for name, t in jetson.temperature.items()
                     if t.get("online", True) and float(t["temp"]) > OFFLINE_TEMP_C
                     and str(name).lower() not in IGNORED_ZONES}
            power = jetson.power
            power_w = float(power["tot"]["power"]) / 1000.0 if power and "tot" in power else None
            gpus = list(jetson.gpu.values())
            gpu_util = float(gpus[0]["status"]["load"]) if gpus else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReaderError(f"jtop returned data this monitor does not understand ({exc!r})") from exc
        total, used = ram["tot"] / 1024.0, ram["used"] / 1024.0
        try:
            available = available_mb(read_meminfo(self._root / "proc/meminfo"))
        except OSError:
            available = total - used
        return HealthReading(
            stamp=time.time(), source=self.name, mem_total_mb=total, mem_used_mb=used, mem_available_mb=available,
            swap_used_mb=swap["used"] / 1024.0, rss_mb=process_memory_mb()[0], gpu_mem_used_mb=None,
            gpu_mem_total_mb=None, temps_c=temps, power_w=power_w, gpu_util=gpu_util,
        )

    def close(self) -> None:
        self._jetson.close()
