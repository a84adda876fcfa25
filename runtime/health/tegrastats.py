"""The `tegrastats` source: `tegrastats --interval <ms>` as a child process, its lines parsed (Orin: `VDD_IN
5124mW/5124mW`, Xavier/Nano: `VDD_IN 3654/3654` or `POM_5V_IN 1016/1016`); killed when the monitor stops.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.health.base import IGNORED_ZONES, OFFLINE_TEMP_C, HealthReading, ReaderError, total_power
from runtime.host import available_mb, process_memory_mb, read_meminfo

log = logging.getLogger("runtime.monitor")


@dataclass
class TegrastatsSample:
    ram_used_mb: float
    ram_total_mb: float
    swap_used_mb: float | None
    swap_total_mb: float | None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, float] = field(default_factory=dict)  # instantaneous power per rail
    power_w: float | None = None
    gpu_util: float | None = None


_UNIT_MB = {"k": 1 / 1024, "M": 1.0, "G": 1024.0}
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)([kMG])B")
_SWAP_RE = re.compile(r"\bSWAP (\d+)/(\d+)([kMG])B")
_TEMP_RE = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
# Orin: `VDD_IN 5124mW/5124mW`; Xavier/Nano/TX: `VDD_IN 3654/3654`, `POM_5V_IN 1016/1016` (current/average mW).
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\d+)%")
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def parse_tegrastats(line: str) -> TegrastatsSample | None:
    """One tegrastats line (Orin, Xavier, Nano, TX formats); None when it holds no RAM figure."""
    ram = _RAM_RE.search(line)
    if ram is None:
        return None
    unit = _UNIT_MB[ram.group(3)]
    sample = TegrastatsSample(int(ram.group(1)) * unit, int(ram.group(2)) * unit, None, None)
    swap = _SWAP_RE.search(line)
    if swap is not None:
        unit = _UNIT_MB[swap.group(3)]
        sample.swap_used_mb, sample.swap_total_mb = int(swap.group(1)) * unit, int(swap.group(2)) * unit
    for name, value in _TEMP_RE.findall(line):
        zone, temp = name.lower(), float(value)
        if zone not in IGNORED_ZONES and temp > OFFLINE_TEMP_C:
            sample.temps_c[zone] = temp
    for name, current, _average in _RAIL_RE.findall(line):
        sample.rails_mw[name] = float(current)
    total_mw = total_power(sample.rails_mw)
    sample.power_w = None if total_mw is None else total_mw / 1000.0
    gr3d = _GR3D_RE.search(line)
    sample.gpu_util = float(gr3d.group(1)) if gr3d else None
    return sample


def check_exit(process: subprocess.Popen[str], what: str, detail: str = "", expected: tuple[int, ...] = (0,)) -> None:
    """Raise ReaderError when a finished child process exited with an unexpected code."""
    code = process.poll()
    if code is not None and code not in expected:
        raise ReaderError(f"{what} exited with code {code}{detail}")


class TegrastatsReader:
    """`tegrastats --interval MS` as a child process; a thread keeps its newest line."""

    name = "tegrastats"

    def __init__(self, executable: str, interval_s: float, why: str = "requested", root: Path = Path("/")) -> None:
        self.why = why
        self._root = root
        self._interval_s = interval_s
        # If no line arrives for this long, tegrastats is wedged: fall back rather than guard on stale numbers.
        self._stale_after_s = max(3 * interval_s, 3.0)
        self._lock = threading.Lock()
        self._latest: tuple[float, TegrastatsSample] | None = None
        self._closed = False
        self._last_other = ""  # the last line that was not a sample (an error message, usually)
        # stderr joins stdout: one pipe, one reader, and an error message ends up in the log.
        self.process = subprocess.Popen(
            [executable, "--interval", str(max(1, round(interval_s * 1000)))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._pump, name="tegrastats reader", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sample = parse_tegrastats(line)
            with self._lock:
                if sample is None:
                    self._last_other = line.strip()
                else:
                    self._latest = (time.monotonic(), sample)

    def read(self) -> HealthReading | None:
        if self.process.poll() is not None:
            self._thread.join(timeout=1.0)  # let the pump read the rest of the pipe: the error message is there
            detail = self._detail()
            check_exit(self.process, "tegrastats", detail)
            raise ReaderError(f"tegrastats ended{detail}")
        with self._lock:
            latest = self._latest
        since = time.monotonic() - (latest[0] if latest else self._started)
        if since > self._stale_after_s:
            raise ReaderError(f"tegrastats printed no usable line for {since:.1f} s{self._detail()}")
        if latest is None:
            return None
        sample = latest[1]
        try:
            available = available_mb(read_meminfo(self._root / "proc/meminfo"))
        except OSError:
            available = sample.ram_total_mb - sample.ram_used_mb
        return HealthReading(
            stamp=time.time(), source=self.name, mem_total_mb=sample.ram_total_mb, mem_used_mb=sample.ram_used_mb,
            mem_available_mb=available, swap_used_mb=sample.swap_used_mb, rss_mb=process_memory_mb()[0],
            gpu_mem_used_mb=None, gpu_mem_total_mb=None, temps_c=dict(sample.temps_c), power_w=sample.power_w,
            gpu_util=sample.gpu_util,
        )

    def _detail(self) -> str:
        with self._lock:
            return f"; last output: {self._last_other}" if self._last_other else ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            try:
                check_exit(self.process, "tegrastats", self._detail())
            except ReaderError as exc:
                log.warning("health monitor: %s", exc)
        self._thread.join(timeout=2.0)
        if self.process.stdout is not None:
            self.process.stdout.close()
