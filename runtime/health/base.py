"""What every health reader delivers (`HealthReading`), how it fails (`ReaderError`), and the readings' shared rules
(which temperatures and power rails count); runtime/health/monitor.py uses them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

OFFLINE_TEMP_C = -40.0  # Jetson zones of powered-down blocks read -256 C; nothing real is this cold
IGNORED_ZONES = ("pmic",)  # Nano/TX/Xavier PMIC zone is a constant 100 C placeholder (jtop hides it too)
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power, where the board measures it


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


class Reader(Protocol):
    name: str
    why: str  # why this source was chosen (the others were not available), for the log and the report

    def read(self) -> HealthReading | None: ...  # None: nothing to report yet; raises ReaderError when broken

    def close(self) -> None: ...


def total_power(rails: dict[str, float]) -> float | None:
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values()) if rails else None
