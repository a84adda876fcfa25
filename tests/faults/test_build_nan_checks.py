"""NaN and inf never pass: parity and the INT8 gate fail on them, and a bundle whose manifest carries non-finite or
out-of-range action/preprocessing settings is refused at load."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from build_engines.cli import main as build_main
from build_engines.int8 import PartGate, gate_rank, part_gate
from build_engines.parity import ErrorStats, ParityReport, PartParity, parity_failure
from runtime.bundle import load_bundle
from runtime.errors import MobileVLAError
from runtime.scoring import cosine
from tests.fakes.runners import FixedRunner
from tests.faults.test_build_inputs import write_run

GOOD = np.array([0.5, -0.25, 0.125], dtype=np.float32)


def parity_of(got: np.ndarray, want: np.ndarray = GOOD) -> PartParity:
    stats = ErrorStats()
    stats.add(GOOD, GOOD)  # a clean first sample: NaN must not be dropped by a running max/min
    stats.add(got, want)
    return PartParity(stats, tolerance=1e-4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_parity_fails_on_non_finite_outputs(bad: float) -> None:
    got = GOOD.copy()
    got[1] = bad
    for part in (parity_of(got), parity_of(GOOD, got)):
        assert not part.passed and part.stats.non_finite == 1
        assert math.isnan(part.stats.min_cosine)
    assert parity_of(GOOD.copy()).passed


def test_parity_report_with_nan_fails_and_says_so() -> None:
    nan = GOOD.copy()
    nan[0] = math.nan
    report = ParityReport({"vision": parity_of(GOOD.copy()), "end_to_end": parity_of(nan)}, 2, "robovlms",
                          "velocities")
    assert not report.passed and report.to_dict()["passed"] is False
    message = parity_failure(report)
    assert "parity FAILED: outputs hold NaN or inf: end_to_end: 1 of 2 outputs non-finite" in message
    assert "No bundle was written" in message


def test_cosine_of_nan_or_an_all_zero_output_is_not_a_match() -> None:
    nan = GOOD.copy()
    nan[2] = math.nan
    assert math.isnan(cosine(nan, GOOD)) and math.isnan(cosine(GOOD, nan))
    assert cosine(np.zeros(3, np.float32), GOOD) == 0.0
    assert cosine(np.zeros(3, np.float32), np.zeros(3, np.float32)) == 1.0
    assert cosine(GOOD, GOOD) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_int8_part_gate_fails_on_nan(bad: float) -> None:
    broken = GOOD.copy()
    broken[0] = bad
    fp32, int8 = FixedRunner({"y": GOOD}), FixedRunner({"y": broken})
    gate = part_gate(fp32, int8, [{}, {}], threshold=0.5)  # type: ignore[arg-type]
    assert not gate.passed and math.isnan(gate.cosine_mean)
    assert part_gate(fp32, FixedRunner({"y": GOOD}), [{}], threshold=0.99).passed  # type: ignore[arg-type]
    zero = part_gate(fp32, FixedRunner({"y": np.zeros(3, np.float32)}), [{}], threshold=0.5)  # type: ignore[arg-type]
    assert not zero.passed and zero.cosine_mean == 0.0


def test_a_nan_part_falls_back_first() -> None:
    gates = {"vision": PartGate(0.995, 0.99, 4, True), "trunk": PartGate(math.nan, math.nan, 4, False)}
    assert min(gates, key=lambda n: gate_rank(gates[n])) == "trunk"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_run(tmp_path_factory.mktemp("run1"))
    output = tmp_path_factory.mktemp("built") / "bundle"
    assert build_main(run.argv(output)) == 0
    return output


def with_manifest(bundle: Path, target: Path, section: str, **values: Any) -> Path:
    shutil.copytree(bundle, target)
    path = target / "manifest.json"
    data = json.loads(path.read_text())
    data[section].update(values)
    path.write_text(json.dumps(data))  # NaN/Infinity as Python's json writes them
    return target


@pytest.mark.parametrize(("section", "values", "words"), [
    ("action", {"norm_max": [math.nan]}, "action.norm_max[0] = nan: it is not a finite number"),
    ("action", {"norm_min": [-math.inf, -0.5]}, "action.norm_min[0] = -inf: it is not a finite number"),
    ("action", {"norm_min": [1.0, 0.5], "norm_max": [-1.0, -0.5]},
     "action.norm_min[0] = 1.0 is not below norm_max[0] = -1.0"),
    ("action", {"norm_min": [0.0, 0.0, 0.0]}, "action.norm_min has 3 values: it must have 1 or action_dim = 2"),
    ("action", {"output_scale": 0.0}, "action.output_scale = 0.0: it must be > 0"),
    ("action", {"output_scale": math.nan}, "action.output_scale = nan: it is not a finite number"),
    ("action", {"output_limit": math.inf}, "action.output_limit = inf: it is not a finite number"),
    ("action", {"output_limit": -1.0}, "action.output_limit = -1.0: it must be > 0"),
    ("preprocessing", {"image_std": [0.0, 0.0, 0.0]}, "preprocessing.image_std[0] = 0.0: it must be > 0"),
    ("preprocessing", {"image_mean": [math.nan, 0.4, 0.4]},
     "preprocessing.image_mean[0] = nan: it is not a finite number"),
    ("preprocessing", {"image_mean": [123.7, 116.3, 103.5]}, "preprocessing.image_mean[0] = 123.7: it must be <= 1"),
])
def test_bundle_with_bad_settings_is_refused_at_load(bundle: Path, tmp_path: Path, section: str,
                                                     values: dict[str, Any], words: str) -> None:
    target = with_manifest(bundle, tmp_path / "bundle", section, **values)
    with pytest.raises(MobileVLAError) as info:
        load_bundle(target)
    message = str(info.value)
    assert f"{target / 'manifest.json'} has settings out of range: " in message and words in message
    assert "fix the config and rebuild the bundle with build_engines" in message


def test_the_built_bundle_loads(bundle: Path) -> None:
    manifest = load_bundle(bundle).manifest
    assert manifest.action.norm_min == (-1.0, -0.5) and manifest.action.output_scale == 1.0
