"""Real size (`kosmos-2` preset, random weights): export and parity. Slow (minutes, ~12+ GB RAM): `make test-slow`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from build_engines.build import BuildOptions, build_bundle
from build_engines.demo.episodes import SyntheticSpec, generate_episodes
from build_engines.int8 import GateSettings
from calibration.sampling import SampleSettings
from runtime.bundle import load_bundle


def build_peak_gb(report: dict[str, Any]) -> float:
    """The build resets the kernel's peak after each stage (memory.stage_memory): its peak is the stages' largest."""
    return float(max(v for k, v in report["timings"].items() if k.endswith("_peak_rss_gb")))


@pytest.mark.slow
def test_kosmos2_preset_exports_with_parity(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = build_bundle(BuildOptions(output=tmp_path / "kosmos2", preset="kosmos-2", random_weights=True,
                                       parity_frames=12))
    elapsed = time.perf_counter() - started
    report = json.loads((result.bundle / "build_report.json").read_text())
    peak_gb = build_peak_gb(report)
    print(f"\nkosmos-2 random weights: build {elapsed:.0f} s, peak RSS {peak_gb:.1f} GB")
    print(json.dumps({"timings": report["timings"], "sizes_bytes": report["sizes_bytes"],
                      "parity": report["parity"]["parts"]}, indent=1))
    manifest = load_bundle(result.bundle).manifest
    assert manifest.parts["trunk"].external_data == "trunk.onnx.data"  # > 2 GB of weights
    assert manifest.parts["trunk"].spec.outputs[0].shape == (1, 2048)
    assert manifest.parts["vision"].spec.outputs[0].shape == (1, 64, 2048)
    assert result.parity.passed, report["parity"]


ON_PURPOSE = {"LayerNormalization", "Softmax", "ReduceSum", "Sqrt", "Mul", "Add"}  # fp16.KEEP_FP32, L2 norm, embeds
REAL_SIZE_RECORD = Path(".cache/real-size-int8.json")  # the figures docs/measurements.md quotes (make test-slow)


@pytest.mark.slow
def test_kosmos2_preset_int8_build_fits_this_machine(tmp_path: Path) -> None:
    """`--random-weights --preset kosmos-2 --int8` on synthetic episodes: time and peak memory per stage.

    Fewer frames than a robot build (8 calibration, 8 per-part gate, 2 held-out episodes of 8 frames): time grows
    with the frames, memory does not (calibration streams, tests/calibration/test_streaming.py)."""
    episodes = tmp_path / "episodes"
    generate_episodes(episodes, SyntheticSpec(episodes_per_scenario=2, frames=8,
                                              scenarios=("1box_vert_left", "1box_vert_right")))
    started = time.perf_counter()
    result = build_bundle(BuildOptions(
        output=tmp_path / "kosmos2-int8", preset="kosmos-2", random_weights=True, parity_frames=4, int8=True,
        episodes=episodes, sample=SampleSettings(frames=8, held_out_fraction=0.5), gate=GateSettings(part_frames=8),
        engines=False))
    elapsed = time.perf_counter() - started
    report = json.loads((result.bundle / "build_report.json").read_text())
    accuracy = json.loads((result.bundle / "accuracy_report.json").read_text())
    manifest = load_bundle(result.bundle, verify_hashes=False).manifest
    record = {
        "build_s": round(elapsed),
        "peak_rss_gb": build_peak_gb(report),
        "timings": report["timings"],
        "layers": {name: entry.layers for name, entry in manifest.parts.items()},
        "precision": accuracy["precision"],
        "gate": accuracy["gate"]["end_to_end"],
        "device_gate": accuracy["device_graphs"]["end_to_end"],
        "cpu_int8": {k: accuracy["cpu_int8"][k] for k in ("policy_ms", "onnxruntime_precision", "seconds")},
        "sizes_bytes": report["sizes_bytes"],
    }
    REAL_SIZE_RECORD.parent.mkdir(exist_ok=True)
    REAL_SIZE_RECORD.write_text(json.dumps(record, indent=1, default=str))
    print(json.dumps(record, indent=1, default=str))
    for name, entry in manifest.parts.items():
        for precision, layers in entry.layers.items():
            assert layers["fp16"] > 0 and set(layers["fp32_by_op"]) <= ON_PURPOSE, (name, precision, layers)
    assert manifest.parts["trunk"].layers["int8"]["int8"] > 0
    for label in ("fp16", "int8_fp16"):
        assert accuracy["device_graphs"]["end_to_end"][label]["finite"], label
