"""The embedded demo's `build_engines --int8` with the default gates: the same decisions on any x86-64 build host,
and a pass with a clear margin (docs/building.md, "The embedded demo").

Two builds in subprocesses, PyTorch held to two CPU levels (the host's own kernels, AVX-512 on the CI machine, and
the baseline): everything PyTorch, MKL and oneDNN compute in the building process runs on other kernels. The demo fit
runs pinned (demo/pinned.py), so its weights are the same bits; the export, calibration and gates then see float
differences of ~1e-7 and must decide the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from build_engines.int8 import GateSettings
from runtime.scoring import DEFAULT_DEAD_BAND

CPU_LEVELS = {  # name -> what the building process's PyTorch is held to
    "host": {},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
FIGURE_TOLERANCE = 1e-4  # the gate figures of two hosts may differ by float noise, never by this much


def build(output: Path, episodes: Path, level: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    result = subprocess.run([sys.executable, "-m", "build_engines", "--int8", "--no-engines", "--calibration-data",
                             str(episodes), "--output", str(output)], env={**env, **level}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((output / "manifest.json").read_text())
    return {"manifest": manifest, "accuracy": json.loads((output / "accuracy_report.json").read_text()),
            "report": json.loads((output / "build_report.json").read_text())}


@pytest.fixture(scope="module")
def builds(demo_episodes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("cpu-levels")
    return {name: build(root / name, demo_episodes, level) for name, level in CPU_LEVELS.items()}


def decisions(built: dict[str, Any]) -> dict[str, Any]:
    gate = built["accuracy"]["gate"]
    return {
        "precision": {name: part["precision"] for name, part in built["manifest"]["parts"].items()},
        "part_gates": {name: part["passed"] for name, part in gate["parts"].items()},
        "end_to_end": (gate["end_to_end"]["passed"], gate["end_to_end"]["int8_parts"]),
        "device_graphs": {label: r["passed"] for label, r in built["accuracy"]["device_graphs"]["end_to_end"].items()},
        "warnings": built["manifest"]["warnings"],
    }


def test_the_fit_gives_the_same_weights_on_both_cpu_levels(builds: dict[str, dict[str, Any]]) -> None:
    fits = {name: b["manifest"]["source"]["fit"] for name, b in builds.items()}
    assert len({fit["weights_sha256"] for fit in fits.values()}) == 1, fits
    assert all("ATen DEFAULT, 1 thread(s)" in fit["cpu"] for fit in fits.values()), fits
    assert builds["baseline"]["report"]["host"]["torch_cpu_capability"] == "DEFAULT"  # the building process was held


def test_the_host_level_is_not_the_baseline_here(builds: dict[str, dict[str, Any]]) -> None:
    """On a machine whose PyTorch picks AVX2 or AVX-512 (CI's: AVX-512), the two builds really ran other kernels."""
    host = builds["host"]["report"]["host"]["torch_cpu_capability"]
    if host == "DEFAULT":
        pytest.skip("this machine's PyTorch runs the baseline kernels itself: one CPU level only")
    assert host in ("AVX2", "AVX512")


def test_the_gate_decides_the_same_on_both_cpu_levels(builds: dict[str, dict[str, Any]]) -> None:
    host, baseline = (decisions(builds[name]) for name in CPU_LEVELS)
    assert host == baseline
    figures = [builds[name]["accuracy"]["gate"]["end_to_end"] for name in CPU_LEVELS]
    for key in ("mae", "max_abs_err", "sign_agreement"):
        assert abs(figures[0][key] - figures[1][key]) <= FIGURE_TOLERANCE, (key, figures)


@pytest.mark.parametrize("level", list(CPU_LEVELS))
def test_the_demo_is_int8_everywhere_with_a_clear_margin(builds: dict[str, dict[str, Any]], level: str) -> None:
    """The README's promise: all parts INT8 under the default gate. Margin: the MAE a quarter of its bound, and no
    frame's error reaches the sign comparison's dead band, so no frame can count as a direction disagreement."""
    built = builds[level]
    assert decisions(built)["precision"] == {"vision": "int8", "trunk": "int8", "head": "int8"}
    assert decisions(built)["warnings"] == []
    e2e, bounds = built["accuracy"]["gate"]["end_to_end"], GateSettings()
    assert built["accuracy"]["gate"]["thresholds"]["mae"] == bounds.mae  # built with the defaults
    assert e2e["passed"] and e2e["int8_parts"] == ["vision", "trunk", "head"]
    assert e2e["mae"] <= bounds.mae / 4 and e2e["max_abs_err"] < DEFAULT_DEAD_BAND == bounds.dead_band
    assert e2e["sign_agreement"] == 1.0
