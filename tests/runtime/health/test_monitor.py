"""Health monitor on this machine (no Jetson: /proc), through a stand-in `tegrastats`, and on a fake sysfs tree."""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.config import MonitorConfig, parse_section
from runtime.errors import MobileVLAError
from runtime.health.monitor import HealthMonitor
from runtime.health.proc import ProcReader
from runtime.health.select import choose_reader
from runtime.health.tegrastats import TegrastatsReader, parse_tegrastats
from runtime.host import read_meminfo

# Real tegrastats output. Orin NX 16GB, JetPack 6 (L4T r36): lower-case zones, mW units, a date in front.
ORIN_R36 = ("08-29-2024 14:03:41 RAM 3542/15656MB (lfb 2x4MB) SWAP 12/7828MB (cached 0MB) CPU [2%@729,1%@729,"
            "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 37%@[611] NVENC off NVDEC off "
            "NVJPG off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 200 cpu@46.843C "
            "soc2@45.625C soc0@45.781C gpu@45.5C tj@46.843C soc1@45.343C VDD_IN 5124mW/5124mW "
            "VDD_CPU_GPU_CV 626mW/626mW VDD_SOC 1566mW/1566mW")
# Orin NX, JetPack 5 (L4T r35): upper-case zones, -256C for powered-down blocks.
ORIN_R35 = ("RAM 2761/15388MB (lfb 2736x4MB) SWAP 0/7694MB (cached 0MB) CPU [3%@729,1%@729,0%@729,0%@729,0%@729,"
            "0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[306,0] VIC_FREQ 115 APE 174 CV0@-256C "
            "CPU@46.468C SOC2@44.343C SOC0@44.906C CV1@-256C GPU@-256C tj@46.468C SOC1@43.843C CV2@-256C "
            "VDD_IN 4930mW/4930mW VDD_CPU_GPU_CV 633mW/633mW VDD_SOC 1424mW/1424mW")
# Xavier NX, JetPack 4: no units on rails, a PMIC placeholder zone at 100C.
XAVIER_NX = ("RAM 2153/7765MB (lfb 1087x4MB) SWAP 0/3882MB (cached 0MB) CPU [3%@1190,2%@1190,1%@1190,2%@1190,off,"
             "off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@114 APE 150 MTS fg 0% bg 0% AO@37C GPU@37.5C PMIC@100C AUX@36.5C "
             "CPU@38.5C thermal@37.35C VDD_IN 3654/3654 VDD_CPU_GPU_CV 455/455 VDD_SOC 1110/1110")
NANO = ("RAM 1136/3956MB (lfb 5x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [6%@102,3%@102,1%@102,"
        "0%@102] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@22.5C CPU@25C PMIC@100C GPU@23.5C AO@31C "
        "thermal@24.25C POM_5V_IN 1016/1016 POM_5V_GPU 0/0 POM_5V_CPU 121/121")
AGX_XAVIER = ("RAM 3012/31919MB (lfb 6703x4MB) SWAP 0/15959MB (cached 0MB) CPU [1%@1190,0%@1190,off,off,off,off,off,"
              "off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@318 APE 150 MTS fg 0% bg 0% AO@35C GPU@35.5C Tdiode@38.25C "
              "PMIC@100C AUX@35C CPU@36.5C thermal@35.7C Tboard@35C GPU 0/0 CPU 156/156 SOC 779/779 CV 0/0 "
              "VDDRQ 155/155 SYS5V 1233/1233")


def no_jetson_tools() -> bool:
    return importlib.util.find_spec("jtop") is None and shutil.which("tegrastats") is None


def fake_tegrastats(directory: Path, line: str = ORIN_R36, exit_after: int | None = None,
                    error: str = "") -> Path:
    """An executable `tegrastats` printing `line` once per --interval, like the real one (optionally failing)."""
    script = directory / "tegrastats"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "interval = int(sys.argv[sys.argv.index('--interval') + 1]) / 1000\n"
        f"line, exit_after, error = {line!r}, {exit_after!r}, {error!r}\n"
        "n = 0\n"
        "while exit_after is None or n < exit_after:\n"
        "    print(line, flush=True)\n"
        "    n += 1\n"
        "    time.sleep(interval)\n"
        "if error:\n"
        "    print(error, file=sys.stderr, flush=True)\n"
        "sys.exit(3)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def tegrastats_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake_tegrastats(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------------ parsing


def test_parse_orin_jetpack6_line() -> None:
    sample = parse_tegrastats(ORIN_R36)
    assert sample is not None
    assert (sample.ram_used_mb, sample.ram_total_mb) == (3542, 15656)
    assert (sample.swap_used_mb, sample.swap_total_mb) == (12, 7828)
    assert sample.temps_c == {"cpu": 46.843, "soc2": 45.625, "soc0": 45.781, "gpu": 45.5, "tj": 46.843,
                              "soc1": 45.343}
    assert sample.rails_mw == {"VDD_IN": 5124, "VDD_CPU_GPU_CV": 626, "VDD_SOC": 1566}
    assert sample.power_w == pytest.approx(5.124)  # the input rail, not the sum
    assert sample.gpu_util == 37


def test_parse_orin_jetpack5_skips_offline_zones() -> None:
    sample = parse_tegrastats(ORIN_R35)
    assert sample is not None
    assert sample.temps_c == {"cpu": 46.468, "soc2": 44.343, "soc0": 44.906, "tj": 46.468, "soc1": 43.843}
    assert sample.power_w == pytest.approx(4.930)
    assert sample.gpu_util == 0


def test_parse_xavier_and_nano_lines() -> None:
    xavier = parse_tegrastats(XAVIER_NX)
    assert xavier is not None
    assert (xavier.ram_used_mb, xavier.ram_total_mb, xavier.swap_total_mb) == (2153, 7765, 3882)
    assert "pmic" not in xavier.temps_c  # a constant 100 C placeholder, not a sensor
    assert xavier.temps_c["thermal"] == 37.35
    assert xavier.power_w == pytest.approx(3.654)
    nano = parse_tegrastats(NANO)
    assert nano is not None
    assert (nano.ram_used_mb, nano.ram_total_mb) == (1136, 3956)  # not the IRAM figure
    assert nano.power_w == pytest.approx(1.016)  # POM_5V_IN
    assert nano.rails_mw == {"POM_5V_IN": 1016, "POM_5V_GPU": 0, "POM_5V_CPU": 121}
    agx = parse_tegrastats(AGX_XAVIER)
    assert agx is not None
    assert agx.power_w == pytest.approx((156 + 779 + 155 + 1233) / 1000)  # no input rail: the sum of the rails
    assert agx.temps_c["tboard"] == 35.0


def test_parse_rejects_non_sample_lines() -> None:
    assert parse_tegrastats("Error: tegrastats needs root privileges") is None
    assert parse_tegrastats("") is None


# ------------------------------------------------------------------------------------------------ this machine


def test_auto_picks_proc_here_and_reads_sane_values() -> None:
    if not no_jetson_tools():
        pytest.skip("jtop or tegrastats is present on this machine")
    reader = choose_reader("auto")
    try:
        assert reader.name == "proc"
        assert reader.why == "jtop not installed; tegrastats not on PATH"
        reading = reader.read()
    finally:
        reader.close()
    assert reading is not None
    assert 0 < reading.mem_available_mb <= reading.mem_total_mb
    assert reading.mem_used_mb == pytest.approx(reading.mem_total_mb - reading.mem_available_mb)
    meminfo = read_meminfo()
    assert reading.mem_total_mb == pytest.approx(meminfo["MemTotal"])
    assert reading.swap_used_mb is not None and reading.swap_used_mb >= 0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 0 < reading.rss_mb <= peak_mb * 1.05
    psutil = pytest.importorskip("psutil")
    assert reading.rss_mb == pytest.approx(psutil.Process().memory_info().rss / 2**20, rel=0.2)
    json_ready = reading.to_dict()
    assert json_ready["source"] == "proc" and isinstance(json_ready["mem_available_mb"], float)


def test_explicit_sources_that_are_missing_say_so() -> None:
    if not no_jetson_tools():
        pytest.skip("jtop or tegrastats is present on this machine")
    with pytest.raises(MobileVLAError, match="monitor source jtop: jtop not installed; install jetson-stats"):
        choose_reader("jtop")
    with pytest.raises(MobileVLAError, match="monitor source tegrastats: tegrastats not on PATH"):
        choose_reader("tegrastats")
    # the one validation of the monitor's settings is the config's, for the file and the flags alike
    with pytest.raises(MobileVLAError, match=r"config key `monitor.source` has value 'nvml'; allowed: auto \| jtop"):
        parse_section("monitor", {"source": "nvml"})


def test_guard_fires_once_with_its_message(caplog: pytest.LogCaptureFixture) -> None:
    messages: list[str] = []
    # thresholds above any real machine: the guard and the low-memory warning fire, swap and temperature do not
    settings = MonitorConfig(interval_s=0.02, guard_available_mb=5e8, warn_available_mb=9e8, warn_swap_mb=9e8,
                             warn_temp_c=150.0, source="proc")
    with caplog.at_level(logging.INFO, logger="runtime.monitor"), HealthMonitor(settings, messages.append) as monitor:
        wait_until(lambda: monitor.summary()["readings"] >= 5)
    assert len(messages) == 1
    assert messages[0].startswith("memory guard: MemAvailable ")
    assert messages[0].endswith(" MB < 500000000 MB; stopping before the OOM killer does")
    summary = monitor.summary()
    assert summary["guard_tripped"] is True
    assert summary["source"] == "proc"
    # One low-memory warning, not one per reading.
    low = [r for r in caplog.records if "low memory" in r.getMessage()]
    assert len(low) == 1
    assert summary["warnings"] == [messages[0], low[0].getMessage().removeprefix("health monitor: ")]


def test_no_guard_and_summary_on_a_healthy_machine() -> None:
    messages: list[str] = []
    with HealthMonitor(MonitorConfig(interval_s=0.02, guard_available_mb=1.0, warn_available_mb=1.0,
                                     warn_swap_mb=9e8, warn_temp_c=150.0, source="proc"),
                       messages.append) as monitor:
        wait_until(lambda: monitor.latest is not None)
        wait_until(lambda: monitor.summary()["readings"] >= 3)
    assert messages == []
    summary = monitor.summary()
    assert summary["warnings"] == [] and summary["guard_tripped"] is False
    assert 0 < monitor.peak_rss_mb <= float(summary["rss_high_water_mb"]) + 1  # type: ignore[arg-type]
    assert 0 < monitor.min_available_mb < float("inf")
    assert summary["min_available_mb"] == round(monitor.min_available_mb, 1)


def test_thread_stops_within_an_interval() -> None:
    monitor = HealthMonitor(MonitorConfig(interval_s=0.5, source="proc"), lambda message: None)
    monitor.start()
    wait_until(lambda: monitor.latest is not None)
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 0.5
    assert not any(t.name == "health monitor" for t in threading.enumerate())


# ------------------------------------------------------------------------------------------- tegrastats for real


def test_auto_prefers_tegrastats_on_path_and_parses_it(tegrastats_on_path: Path) -> None:
    if importlib.util.find_spec("jtop") is not None:
        pytest.skip("jtop is installed here and would be tried first")
    settings = MonitorConfig(interval_s=0.05, warn_temp_c=46.0)
    with HealthMonitor(settings, lambda message: None) as monitor:
        assert monitor.source == "tegrastats"
        assert monitor.reader is not None and monitor.reader.why == "jtop not installed"
        wait_until(lambda: monitor.summary()["readings"] >= 3)
        reading = monitor.latest
        reader = monitor.reader
    assert reading is not None and reading.source == "tegrastats"
    assert (reading.mem_used_mb, reading.mem_total_mb, reading.swap_used_mb) == (3542, 15656, 12)
    assert reading.mem_available_mb == pytest.approx(read_meminfo()["MemAvailable"], rel=0.2)  # the kernel's figure
    assert reading.temps_c["gpu"] == 45.5 and reading.temps_c["tj"] == 46.843
    assert reading.power_w == pytest.approx(5.124)
    assert reading.gpu_util == 37
    assert reading.gpu_mem_used_mb is None  # Jetson: GPU memory is system memory
    summary = monitor.summary()
    assert summary["max_temps_c"]["cpu"] == 46.8  # type: ignore[index]
    # cpu and tj are above 46 C: one warning each, however many readings.
    hot = sorted(w.split(" at ")[0] for w in summary["warnings"] if w.startswith("hot"))  # type: ignore[attr-defined]
    assert hot == ["hot: cpu", "hot: tj"]
    # The child process is gone once the monitor stopped.
    assert isinstance(reader, TegrastatsReader)
    assert reader.process.poll() is not None


def test_tegrastats_exit_is_reported_and_proc_takes_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # tegrastats dies after two lines (e.g. a debugfs node it needs went away): the guard must keep running.
    fake_tegrastats(tmp_path, exit_after=2, error="tegrastats: cannot open /sys/kernel/debug/bpmp")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level(logging.WARNING, logger="runtime.monitor"), \
            HealthMonitor(MonitorConfig(interval_s=0.05, source="tegrastats"), lambda message: None) as monitor:
        assert monitor.source == "tegrastats"
        wait_until(lambda: monitor.source == "proc")
        wait_until(lambda: monitor.latest is not None and monitor.latest.source == "proc")
    warning = next(r.getMessage() for r in caplog.records if "stopped working" in r.getMessage())
    cause = "tegrastats exited with code 3; last output: tegrastats: cannot open /sys/kernel/debug/bpmp"
    assert f"tegrastats stopped working ({cause}); reading /proc instead" in warning
    assert monitor.summary()["fallbacks"] == [f"tegrastats: {cause}"]


def test_tegrastats_child_is_killed_on_close(tmp_path: Path) -> None:
    reader = TegrastatsReader(str(fake_tegrastats(tmp_path)), 0.05)
    wait_until(lambda: reader.read() is not None)
    pid = reader.process.pid
    reader.close()
    assert reader.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ------------------------------------------------------------------------------------------------ fake Jetson


def test_proc_reader_on_a_jetson_sysfs_tree(tmp_path: Path) -> None:
    root = tmp_path
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("MemTotal:       15995004 kB\nMemFree:         9000000 kB\n"
                                       "MemAvailable:   12000000 kB\nSwapTotal:       7997500 kB\n"
                                       "SwapFree:        7895100 kB\n")
    for index, (kind, milli) in enumerate([("cpu-thermal", "47500"), ("gpu-thermal", "-256000"),
                                            ("tj-thermal", "48000"), ("cv0-thermal", "oops")]):
        zone = root / f"sys/class/thermal/thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    hwmon = root / "sys/class/hwmon/hwmon1"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("ina3221\n")
    for channel, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1100), ("VDD_CPU_GPU_CV", 5000, 150),
                                               ("VDD_SOC", 5000, 300)], start=1):
        (hwmon / f"in{channel}_label").write_text(label + "\n")
        (hwmon / f"in{channel}_input").write_text(f"{mv}\n")
        (hwmon / f"curr{channel}_input").write_text(f"{ma}\n")
    (hwmon / "in7_label").write_text("sum of shunt voltages\n")
    devfreq = root / "sys/class/devfreq/17000000.gpu/device"
    devfreq.mkdir(parents=True)
    (devfreq / "load").write_text("253\n")

    reader = ProcReader(root=root)
    reading = reader.read()
    reader.close()
    assert reading.mem_total_mb == pytest.approx(15995004 / 1024)
    assert reading.mem_available_mb == pytest.approx(12000000 / 1024)
    assert reading.swap_used_mb == pytest.approx((7997500 - 7895100) / 1024)
    assert reading.temps_c == {"cpu": 47.5, "tj": 48.0}  # offline (-256 C) and unreadable zones skipped
    assert reading.power_w == pytest.approx(5.5)  # VDD_IN: 5000 mV x 1100 mA
    assert reading.gpu_util == pytest.approx(25.3)
    assert reading.gpu_mem_used_mb is None and reading.gpu_mem_total_mb is None
