"""The one place for facts about the machine the process runs on: Jetson detection, sysfs/procfs reads, and this
process's memory (RSS, its peak, and resetting the peak), the Jetson's power mode and clock locks. The monitor, the
benchmark and the build read these."""

from __future__ import annotations

import glob
import logging
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("runtime.host")


def read_text(path: Path) -> str | None:
    """A small sysfs/procfs file, stripped; None when absent or unreadable (sysfs nodes of powered-down blocks fail
    with EINVAL/EAGAIN: treated as absent)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def is_jetson(root: Path = Path("/")) -> bool:
    """An NVIDIA Jetson (L4T): its release file, or a Tegra device tree (containers without /etc/nv_tegra_release)."""
    if (root / "etc/nv_tegra_release").exists():
        return True
    compatible = read_text(root / "proc/device-tree/compatible")
    return compatible is not None and "nvidia,tegra" in compatible


def read_meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, float]:
    """/proc/meminfo (or /proc/self/status) in MB (the kernel writes kB)."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0]) / 1024.0
    return values


def available_mb(meminfo: dict[str, float]) -> float:
    if "MemAvailable" in meminfo:
        return meminfo["MemAvailable"]
    # Kernels before 3.14 have no MemAvailable: free plus page cache is the old, optimistic estimate.
    return meminfo.get("MemFree", 0.0) + meminfo.get("Buffers", 0.0) + meminfo.get("Cached", 0.0)


def peak_rss_mb() -> float:
    """This process's peak resident set from getrusage (kB on Linux, bytes on macOS). On Linux it is the same
    high-water mark as VmHWM, so `reset_peak_rss` resets it too."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * (1024.0 if sys.platform == "darwin" else 1))


def process_memory_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB: /proc/self/status, else psutil, else the peak from getrusage."""
    try:
        status = read_meminfo(Path("/proc/self/status"))
        return status["VmRSS"], status.get("VmHWM", status["VmRSS"])
    except (OSError, KeyError):
        pass
    peak = peak_rss_mb()
    try:
        import psutil
    except ImportError:
        return peak, peak
    rss = psutil.Process().memory_info().rss / 2**20
    return rss, max(peak, rss)


def reset_peak_rss(clear_refs: Path = Path("/proc/self/clear_refs")) -> bool:
    """Reset the kernel's high-water mark of this process (VmHWM and ru_maxrss) so the next read is the peak
    since now: writing 5 to clear_refs (Linux). False where that is refused; VmHWM is then the lifetime peak."""
    try:
        clear_refs.write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ClockStatus:
    """Jetson power mode and whether CPU and GPU clocks are pinned (jetson_clocks sets min = max)."""

    power_mode: str | None
    cpu_locked: bool | None
    gpu_locked: bool | None

    @property
    def locked(self) -> bool:
        return bool(self.cpu_locked and self.gpu_locked)

    def warning(self) -> str | None:
        if self.locked:
            return None
        return (f"clocks are not locked (power mode {self.power_mode or 'unknown'}, CPU locked: {self.cpu_locked}, "
                f"GPU locked: {self.gpu_locked}): latencies vary with DVFS. For stable figures run "
                f"`sudo nvpmodel -m 0 && sudo jetson_clocks` first")


def _min_equals_max(min_path: str, max_path: str) -> bool | None:
    low, high = read_text(Path(min_path)), read_text(Path(max_path))
    return None if low is None or high is None else low == high


def jetson_clocks(root: str = "/") -> ClockStatus | None:
    """The clock state on a Jetson (None elsewhere), from sysfs and `nvpmodel -q` (no root needed)."""
    if not is_jetson(Path(root)):
        return None
    cpu = os.path.join(root, "sys/devices/system/cpu/cpu0/cpufreq")
    cpu_locked = _min_equals_max(f"{cpu}/scaling_min_freq", f"{cpu}/scaling_max_freq")
    gpu_dirs = sorted(glob.glob(os.path.join(root, "sys/devices/platform/*gpu*/devfreq/*")))
    gpu_locked = _min_equals_max(f"{gpu_dirs[0]}/min_freq", f"{gpu_dirs[0]}/max_freq") if gpu_dirs else None
    return ClockStatus(nvpmodel_mode(), cpu_locked, gpu_locked)


def nvpmodel_mode() -> str | None:
    try:
        done = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        log.debug("nvpmodel -q exited %d: %s", done.returncode, done.stderr.strip())
        return None
    for line in done.stdout.splitlines():
        if "Power Mode" in line:
            return line.split(":", 1)[1].strip()
    return None
