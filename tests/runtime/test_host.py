"""runtime/host.py: the one Jetson check, sysfs reads and this process's memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.host import (
    ClockStatus,
    available_mb,
    is_jetson,
    jetson_clocks,
    peak_rss_mb,
    process_memory_mb,
    read_text,
    reset_peak_rss,
)


def test_jetson_by_release_file_or_tegra_device_tree(tmp_path: Path) -> None:
    assert not is_jetson(tmp_path)
    tree = tmp_path / "proc/device-tree"
    tree.mkdir(parents=True)
    (tree / "compatible").write_text("nvidia,p3768-0000+p3767-0000\x00nvidia,tegra234\x00")
    assert is_jetson(tmp_path)  # a container that lacks /etc/nv_tegra_release
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert is_jetson(other)


def test_sysfs_reads_are_none_when_absent_or_unreadable(tmp_path: Path) -> None:
    assert read_text(tmp_path / "missing") is None
    assert read_text(tmp_path) is None  # a directory: EISDIR
    (tmp_path / "temp").write_text(" 45500\n")
    assert read_text(tmp_path / "temp") == "45500"
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    assert read_text(tmp_path / "binary") is None


def test_available_memory_falls_back_on_old_kernels() -> None:
    assert available_mb({"MemAvailable": 900.0, "MemFree": 1.0}) == 900.0
    assert available_mb({"MemFree": 100.0, "Buffers": 20.0, "Cached": 300.0}) == 420.0


def test_the_peak_resets_so_a_stage_reads_its_own_peak(tmp_path: Path) -> None:
    rss, _ = process_memory_mb()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MB touched
    _, peak_with_block = process_memory_mb()
    del block
    assert reset_peak_rss()
    rss_after, peak_after = process_memory_mb()
    assert peak_with_block >= rss + 60
    assert peak_after < peak_with_block - 30 and peak_after >= rss_after - 1
    assert peak_rss_mb() < peak_with_block - 30  # getrusage reads the same high-water mark on Linux
    assert not reset_peak_rss(tmp_path)  # refused (a directory): the caller is told


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_clock_locks_read_from_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert jetson_clocks(str(tmp_path)) is None  # not a Jetson: nothing to say
    write(tmp_path / "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0\n")
    cpu = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq"
    write(cpu / "scaling_min_freq", "729600\n")
    write(cpu / "scaling_max_freq", "1984000\n")
    gpu = tmp_path / "sys/devices/platform/17000000.gpu/devfreq/17000000.gpu"
    write(gpu / "min_freq", "918000000\n")
    write(gpu / "max_freq", "918000000\n")
    monkeypatch.setattr("runtime.host.nvpmodel_mode", lambda: "MAXN")
    status = jetson_clocks(str(tmp_path))
    assert status == ClockStatus("MAXN", cpu_locked=False, gpu_locked=True) and not status.locked
    assert status.warning() is not None and "sudo nvpmodel -m 0 && sudo jetson_clocks" in status.warning()
    write(cpu / "scaling_min_freq", "1984000\n")
    locked = jetson_clocks(str(tmp_path))
    assert locked is not None and locked.locked and locked.warning() is None
