"""Real size (`kosmos-2` preset, random weights): export and parity. Slow (minutes, ~12+ GB RAM): `make test-slow`."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

from build_engines.build import BuildOptions, build_bundle
from runtime.bundle import load_bundle


@pytest.mark.slow
def test_kosmos2_preset_exports_with_parity(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = build_bundle(BuildOptions(output=tmp_path / "kosmos2", preset="kosmos-2", random_weights=True,
                                       parity_frames=12))
    elapsed = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    report = json.loads((result.bundle / "build_report.json").read_text())
    print(f"\nkosmos-2 random weights: build {elapsed:.0f} s, peak RSS {peak_gb:.1f} GB")
    print(json.dumps({"timings": report["timings"], "sizes_bytes": report["sizes_bytes"],
                      "parity": report["parity"]["parts"]}, indent=1))
    manifest = load_bundle(result.bundle).manifest
    assert manifest.parts["trunk"].external_data == "trunk.onnx.data"  # > 2 GB of weights
    assert manifest.parts["trunk"].spec.outputs[0].shape == (1, 2048)
    assert manifest.parts["vision"].spec.outputs[0].shape == (1, 64, 2048)
    assert result.parity.passed, report["parity"]
