"""Health monitor: memory, swap, temperatures and power at ~1 Hz, with warnings and a memory guard.

Sources (runtime/health/select.py): `jtop`, `tegrastats`, `proc`, each in its module beside this one.

Whatever the source, `mem_available_mb` is the kernel's MemAvailable from /proc/meminfo (the figure the guard
needs; tegrastats and jtop count page cache differently) and `rss_mb` is this process's VmRSS. On a Jetson, GPU
memory is system memory: `gpu_mem_*` stay None there, and CUDA/TensorRT allocations (nvmap) show in
MemAvailable, not in RSS. `power_w` is the board input (VDD_IN / POM_5V_IN; the sum of the rails on boards without
an input rail), or the GPU's own power from NVML on a discrete GPU.

Warnings (logger `runtime.monitor`) are issued once per condition and re-armed after it clears, with a margin:
MemAvailable below `warn_available_mb`, swap used above `warn_swap_mb`, a temperature above `warn_temp_c`. The
memory guard calls `on_guard(message)` once, from the monitor thread, when MemAvailable drops below
`guard_available_mb`: the runtime then sends a zero command and stops, before the kernel's OOM killer picks a
victim at random (maybe the runtime in the middle of a velocity command, maybe the camera daemon). If a source
stops working (tegrastats exits, the jtop service goes away) the monitor falls back to `proc` and keeps guarding.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

from runtime.config import MonitorConfig
from runtime.health.base import HealthReading, Reader, ReaderError
from runtime.health.proc import ProcReader
from runtime.health.select import choose_reader
from runtime.host import process_memory_mb

log = logging.getLogger("runtime.monitor")
MEMORY_MARGIN = 1.1  # a low-memory or swap warning re-arms 10% past its threshold
TEMP_MARGIN_C = 3.0  # a temperature warning re-arms 3 C below its threshold
class HealthMonitor:
    """A background thread that reads health at `interval_s`, warns, and trips the memory guard once."""

    def __init__(self, settings: MonitorConfig, on_guard: Callable[[str], None], root: Path = Path("/")) -> None:
        self.settings = settings
        self._on_guard = on_guard
        self._root = root
        self._reader: Reader | None = None
        self._reader_closed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: HealthReading | None = None
        self._readings = 0
        self._peak_rss = 0.0
        self._min_available = math.inf
        self._max_temps: dict[str, float] = {}
        self._max_power: float | None = None
        self._peak_swap: float | None = None
        self._peak_gpu_mem: float | None = None
        self._active: set[str] = set()  # warning conditions currently raised (re-armed when they clear)
        self._warnings: list[str] = []
        self._guard_tripped = False
        self._fallbacks: list[str] = []

    # ------------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        if self._thread is not None:
            return
        self._reader = choose_reader(self.settings.source, self.settings.interval_s, self._root)
        self._reader_closed = False
        log.info("health monitor: source %s (%s), every %.1f s; memory guard below %.0f MB available",
                 self._reader.name, self._reader.why, self.settings.interval_s, self.settings.guard_available_mb)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="health monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.interval_s + 5.0)
            self._thread = None
        if self._reader is not None and not self._reader_closed:
            self._reader_closed = True
            self._reader.close()  # kills tegrastats

    def __enter__(self) -> HealthMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------- results

    @property
    def latest(self) -> HealthReading | None:
        with self._lock:
            return self._latest

    @property
    def peak_rss_mb(self) -> float:
        with self._lock:
            return self._peak_rss

    @property
    def min_available_mb(self) -> float:
        """The lowest MemAvailable seen (inf before the first reading)."""
        with self._lock:
            return self._min_available

    @property
    def source(self) -> str:
        """The source in use ("" before start); "proc" after a fallback."""
        return self._reader.name if self._reader is not None else ""

    @property
    def reader(self) -> Reader | None:
        return self._reader

    @property
    def guard_tripped(self) -> bool:
        return self._guard_tripped

    def summary(self) -> dict[str, object]:
        """For the benchmark report: source, readings, peaks and minima, warnings issued, guard."""
        with self._lock:
            latest = self._latest
            return {
                "source": self.source,
                "source_why": self._reader.why if self._reader is not None else "",
                "fallbacks": list(self._fallbacks),
                "interval_s": self.settings.interval_s,
                "readings": self._readings,
                "mem_total_mb": round(latest.mem_total_mb, 1) if latest else None,
                "min_available_mb": round(self._min_available, 1) if self._readings else None,
                "peak_rss_mb": round(self._peak_rss, 1),
                "rss_high_water_mb": round(process_memory_mb()[1], 1),  # the kernel's VmHWM: lifetime peak
                "peak_swap_used_mb": _round(self._peak_swap),
                "peak_gpu_mem_used_mb": _round(self._peak_gpu_mem),
                "max_temps_c": {k: round(v, 1) for k, v in sorted(self._max_temps.items())},
                "max_power_w": _round(self._max_power),
                "warnings": list(self._warnings),
                "guard_tripped": self._guard_tripped,
            }

    # -------------------------------------------------------------------------------------------------- thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reading = self._read()
            except Exception:  # a bug in a reader must not end the memory guard: log it and try again
                log.exception("health monitor: reading failed")
                reading = None
            if reading is not None:
                self._record(reading)
                self._check(reading)
            self._stop.wait(self.settings.interval_s)

    def _read(self) -> HealthReading | None:
        assert self._reader is not None
        try:
            return self._reader.read()
        except ReaderError as exc:
            failed = self._reader
            log.warning("health monitor: %s stopped working (%s); reading /proc instead", failed.name, exc)
            try:
                failed.close()
            except Exception as close_exc:  # the fallback matters more than a clean close
                log.warning("health monitor: closing %s failed: %s", failed.name, close_exc)
            self._fallbacks.append(f"{failed.name}: {exc}")
            self._reader = ProcReader(why=f"{failed.name} failed: {exc}", root=self._root)
            return self._reader.read()

    def _record(self, reading: HealthReading) -> None:
        with self._lock:
            self._latest = reading
            self._readings += 1
            self._peak_rss = max(self._peak_rss, reading.rss_mb)
            self._min_available = min(self._min_available, reading.mem_available_mb)
            for zone, temp in reading.temps_c.items():
                self._max_temps[zone] = max(temp, self._max_temps.get(zone, temp))
            self._max_power = _max(self._max_power, reading.power_w)
            self._peak_swap = _max(self._peak_swap, reading.swap_used_mb)
            self._peak_gpu_mem = _max(self._peak_gpu_mem, reading.gpu_mem_used_mb)

    def _check(self, reading: HealthReading) -> None:
        s = self.settings
        available = reading.mem_available_mb
        if available < s.guard_available_mb and not self._guard_tripped:
            self._guard_tripped = True
            message = (f"memory guard: MemAvailable {available:.0f} MB < {s.guard_available_mb:.0f} MB; "
                       "stopping before the OOM killer does")
            log.error("%s", message)
            with self._lock:
                self._warnings.append(message)
            try:
                self._on_guard(message)
            except Exception:
                log.exception("health monitor: on_guard callback failed")
        self._condition("memory", available < s.warn_available_mb, available > s.warn_available_mb * MEMORY_MARGIN,
                        f"low memory: MemAvailable {available:.0f} MB < {s.warn_available_mb:.0f} MB "
                        f"(guard stops the runtime below {s.guard_available_mb:.0f} MB)")
        swap = reading.swap_used_mb
        if swap is not None:
            self._condition("swap", swap > s.warn_swap_mb, swap < s.warn_swap_mb / MEMORY_MARGIN,
                            f"swapping: {swap:.0f} MB of swap in use > {s.warn_swap_mb:.0f} MB; latency will suffer")
        for zone, temp in reading.temps_c.items():
            self._condition(f"temp {zone}", temp > s.warn_temp_c, temp < s.warn_temp_c - TEMP_MARGIN_C,
                            f"hot: {zone} at {temp:.1f} C > {s.warn_temp_c:.0f} C; the module will throttle")

    def _condition(self, key: str, raised: bool, cleared: bool, message: str) -> None:
        """Warn once when a condition is raised; re-arm it only after it cleared with a margin (no flapping)."""
        if raised and key not in self._active:
            self._active.add(key)
            log.warning("health monitor: %s", message)
            with self._lock:
                self._warnings.append(message)
        elif cleared and key in self._active:
            self._active.discard(key)
            log.info("health monitor: cleared: %s", key)


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
