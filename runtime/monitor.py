"""Health monitor: memory, swap, temperatures and power at ~1 Hz, with warnings and a memory guard.

Sources, in the order `auto` tries them:
  - `jtop`: jetson-stats' client, when the package imports and its service answers on /run/jtop.sock (in a
    container: mount the socket). Temperatures, board power, GPU load and RAM as jtop reports them.
  - `tegrastats`: `tegrastats --interval <ms>` as a child process, its lines parsed (Orin: `VDD_IN 5124mW/5124mW`,
    Xavier/Nano: `VDD_IN 3654/3654` or `POM_5V_IN 1016/1016`); killed when the monitor stops.
  - `proc`: /proc/meminfo, /proc/self/status, /sys/class/thermal, the INA3221 hwmon rails and the GPU's devfreq
    load where readable; NVML (pynvml, optional) for a discrete GPU's memory.

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

import importlib.util
import logging
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import MobileVLAError
from runtime.host import available_mb, is_jetson, process_memory_mb, read_meminfo, read_text

log = logging.getLogger("runtime.monitor")

SOURCES = ("auto", "jtop", "tegrastats", "proc")
JTOP_SOCKET = "run/jtop.sock"  # under the root ("/"): jetson-stats' service socket
OFFLINE_TEMP_C = -40.0  # Jetson zones of powered-down blocks read -256 C; nothing real is this cold
IGNORED_ZONES = ("pmic",)  # Nano/TX/Xavier PMIC zone is a constant 100 C placeholder (jtop hides it too)
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power, where the board measures it
GPU_DEVFREQ_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")
MEMORY_MARGIN = 1.1  # a low-memory or swap warning re-arms 10% past its threshold
TEMP_MARGIN_C = 3.0  # a temperature warning re-arms 3 C below its threshold


class ReaderError(Exception):
    """A source stopped delivering (its process exited, its service went away): the monitor falls back to proc."""


@dataclass
class HealthReading:
    stamp: float
    source: str  # "jtop" | "tegrastats" | "proc"
    mem_total_mb: float
    mem_used_mb: float
    mem_available_mb: float  # MemAvailable from /proc/meminfo whatever the source
    swap_used_mb: float | None
    rss_mb: float  # this process
    gpu_mem_used_mb: float | None  # discrete GPU only (NVML); None on a Jetson, where it is system memory
    gpu_mem_total_mb: float | None
    temps_c: dict[str, float]
    power_w: float | None
    gpu_util: float | None  # percent

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float) and key != "stamp":
                value = round(value, 1)
            elif isinstance(value, dict):
                value = {k: round(v, 1) for k, v in value.items()}
            out[key] = value
        return out


@dataclass(frozen=True)
class MonitorSettings:
    interval_s: float = 1.0
    warn_available_mb: float = 1024.0  # warn when MemAvailable below this
    guard_available_mb: float = 384.0  # memory guard: stop the runtime safely below this
    warn_temp_c: float = 85.0
    warn_swap_mb: float = 256.0
    source: str = "auto"  # auto | jtop | tegrastats | proc

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise MobileVLAError(f"monitor source {self.source!r} is unknown; expected one of {', '.join(SOURCES)}")
        if not self.interval_s > 0:
            raise MobileVLAError(f"monitor interval {self.interval_s} s must be positive (default 1.0)")


class Reader(Protocol):
    name: str
    why: str  # why this source was chosen (the others were not available), for the log and the report

    def read(self) -> HealthReading | None: ...  # None: nothing to report yet; raises ReaderError when broken

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------- /proc and sysfs


def read_thermal_zones(root: Path = Path("/")) -> dict[str, float]:
    """Thermal zones by lower-case type without "-thermal" (cpu, gpu, tj, ...), in C; offline zones skipped."""
    temps: dict[str, float] = {}
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        name, raw = read_text(zone / "type"), read_text(zone / "temp")
        if not name or raw is None or not re.fullmatch(r"-?\d+", raw):
            continue
        name = name.lower().removesuffix("-thermal")
        value = int(raw) / 1000.0
        if name in IGNORED_ZONES or value <= OFFLINE_TEMP_C:
            continue
        key, n = name, 1
        while key in temps:  # two zones of one type (x86 acpitz): keep both
            key, n = f"{name}{n}", n + 1
        temps[key] = value
    return temps


def read_ina3221_power_w(root: Path = Path("/")) -> float | None:
    """Board power from the INA3221 hwmon rails (JetPack 5+): the input rail, else the sum of the rails."""
    rails: dict[str, float] = {}
    for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        if read_text(hwmon / "name") != "ina3221":
            continue
        for label_path in sorted(hwmon.glob("in*_label")):
            channel = label_path.name[2:].removesuffix("_label")
            label = read_text(label_path)
            volts, amps = read_text(hwmon / f"in{channel}_input"), read_text(hwmon / f"curr{channel}_input")
            if not label or label == "NC" or "sum of" in label or volts is None or amps is None:
                continue
            try:
                rails[label] = int(volts) * int(amps) / 1e6  # mV * mA -> W
            except ValueError:
                continue
    return _total_power(rails)


def _total_power(rails: dict[str, float]) -> float | None:
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values()) if rails else None


def read_gpu_load(root: Path = Path("/")) -> float | None:
    """A Jetson's GPU load in percent from its devfreq node (0..1000 there)."""
    for node in sorted((root / "sys/class/devfreq").glob("*")):
        if not any(part in GPU_DEVFREQ_NAMES for part in node.name.split(".")):
            continue
        for path in (node / "device/load", node / "load"):
            raw = read_text(path)
            if raw is not None and raw.isdigit():
                return int(raw) / 10.0
    return None


class NvmlGpu:
    """A discrete GPU's memory, load, temperature and power through NVML (pynvml, from nvidia-ml-py)."""

    def __init__(self, index: int = 0) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        # Index 0 in NVML's (PCI bus) order: the GPU the runtime uses on a one-GPU workstation.
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def read(self) -> tuple[float, float, float, float, float | None]:
        """(used MB, total MB, load %, temperature C, power W or None)."""
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        load = nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
        temp = nvml.nvmlDeviceGetTemperature(self._handle, nvml.NVML_TEMPERATURE_GPU)
        try:
            power: float | None = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # mW
        except nvml.NVMLError:
            power = None  # not supported on some boards
        return memory.used / 2**20, memory.total / 2**20, float(load), float(temp), power

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def open_nvml() -> NvmlGpu | None:
    if importlib.util.find_spec("pynvml") is None:
        return None
    try:
        return NvmlGpu()
    except Exception as exc:  # NVMLError: no driver, no GPU; the rest of the monitor works without it
        log.info("health monitor: NVML unavailable (%s); no GPU memory figures", exc)
        return None


# ---------------------------------------------------------------------------------------------------- readers


class ProcReader:
    """/proc + sysfs (+ NVML on a discrete GPU): always available on Linux, in containers too."""

    name = "proc"

    def __init__(self, why: str = "requested", root: Path = Path("/")) -> None:
        self.why = why
        self._root = root
        self._jetson = is_jetson(root)
        self._nvml = None if self._jetson else open_nvml()

    def read(self) -> HealthReading:
        meminfo = read_meminfo(self._root / "proc/meminfo")
        total, available = meminfo.get("MemTotal", 0.0), available_mb(meminfo)
        swap = meminfo["SwapTotal"] - meminfo.get("SwapFree", 0.0) if "SwapTotal" in meminfo else None
        temps = read_thermal_zones(self._root)
        power = read_ina3221_power_w(self._root)
        gpu_used = gpu_total = gpu_util = None
        if self._nvml is not None:
            try:
                gpu_used, gpu_total, gpu_util, gpu_temp, gpu_power = self._nvml.read()
            except Exception as exc:  # NVMLError (driver reset, GPU lost): drop NVML, keep the memory guard going
                log.warning("health monitor: NVML read failed (%s); continuing without GPU figures", exc)
                self._nvml.close()
                self._nvml = None
            else:
                temps.setdefault("gpu", gpu_temp)
                power = gpu_power if power is None else power
        elif self._jetson:
            gpu_util = read_gpu_load(self._root)
        return HealthReading(
            stamp=time.time(), source=self.name, mem_total_mb=total, mem_used_mb=total - available,
            mem_available_mb=available, swap_used_mb=swap, rss_mb=process_memory_mb()[0],
            gpu_mem_used_mb=gpu_used, gpu_mem_total_mb=gpu_total, temps_c=temps, power_w=power, gpu_util=gpu_util,
        )

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


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
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\d+)%")


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
    total_mw = _total_power(sample.rails_mw)
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


def choose_reader(source: str, interval_s: float = 1.0, root: Path = Path("/")) -> Reader:
    """The reader for `source`; `auto` takes jtop (service answering), else tegrastats (on PATH), else proc.

    An explicitly requested source that is not available is a user error (MobileVLAError), not a silent fallback.
    """
    if source not in SOURCES:
        raise MobileVLAError(f"monitor source {source!r} is unknown; expected one of {', '.join(SOURCES)}")
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
                                 "/run/jtop.sock, or use --monitor-source auto")
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
                                 "(in a container, mount it or use --monitor-source proc)")
    return ProcReader(why=_why(skipped), root=root)


def _why(skipped: list[str]) -> str:
    return "; ".join(skipped) if skipped else "first choice"


# ---------------------------------------------------------------------------------------------------- monitor


class HealthMonitor:
    """A background thread that reads health at `interval_s`, warns, and trips the memory guard once."""

    def __init__(self, settings: MonitorSettings, on_guard: Callable[[str], None], root: Path = Path("/")) -> None:
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
