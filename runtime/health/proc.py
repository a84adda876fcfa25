"""The `proc` source: /proc/meminfo, /proc/self/status, /sys/class/thermal, the INA3221 hwmon rails and the GPU's
devfreq load where readable; NVML (pynvml, optional) for a discrete GPU's memory and power.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from pathlib import Path
from typing import Any

from runtime.health.base import IGNORED_ZONES, OFFLINE_TEMP_C, HealthReading, total_power
from runtime.host import available_mb, is_jetson, process_memory_mb, read_meminfo, read_text

log = logging.getLogger("runtime.monitor")
GPU_DEVFREQ_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")


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
    return total_power(rails)


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
