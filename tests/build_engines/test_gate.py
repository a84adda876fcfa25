"""The INT8 gate's logic on engineered inputs on both sides of each bound (build_engines/int8.py): the per-part cosine,
the end-to-end MAE and sign agreement, the fallback order and `--on-gate-failure stop`. Nothing here rests on how
close a built policy lies to a bound."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from build_engines import int8
from build_engines.int8 import GateSettings, Int8Options, PartGate, end_to_end_gate, part_gate
from tests.fakes.runners import FixedRunner

PARTS = ("vision", "trunk", "head")
FRAMES = 100
REFERENCE = np.full((FRAMES, 2), 0.5)  # chunk[0] of FP32, both axes moving forward at 0.5


def at_cosine(value: float) -> np.ndarray:
    """A unit vector whose cosine with (1, 0) is `value`."""
    return np.array([value, math.sqrt(1.0 - value * value)])


@pytest.mark.parametrize(("cosine", "passed"), [(0.9901, True), (0.9899, False)])
def test_part_gate_at_its_cosine_bound(cosine: float, passed: bool) -> None:
    gate = part_gate(FixedRunner({"y": np.array([1.0, 0.0])}), FixedRunner({"y": at_cosine(cosine)}),  # type: ignore[arg-type]
                     [{}, {}], threshold=0.99)
    assert gate.passed is passed and gate.cosine_mean == pytest.approx(cosine, abs=1e-12) and gate.samples == 2


def shifted(delta: float) -> np.ndarray:
    return REFERENCE + delta


def flipped(frames: int) -> np.ndarray:
    """`frames` frames driving backwards: a sign disagreement on both axes (error 1.0, beyond the dead band)."""
    out = REFERENCE.copy()
    out[:frames] = -0.5
    return out


def run_gate(monkeypatch: pytest.MonkeyPatch, deployed: Callable[[frozenset[str]], np.ndarray],
             gate: GateSettings, cosines: Mapping[str, float] | None = None,
             reference: np.ndarray = REFERENCE) -> tuple[dict[str, Any], list[str]]:
    """end_to_end_gate over stand-in runners: `deployed(int8 parts)` is chunk[0] as deployed with those parts INT8."""
    q = SimpleNamespace(names=list(PARTS), int8={n: object() for n in PARTS}, fp32={n: object() for n in PARTS})

    def chunk0(bundle: object, runners: Mapping[str, object], *args: object) -> np.ndarray:
        return deployed(frozenset(n for n in PARTS if runners[n] is q.int8[n]))

    monkeypatch.setattr(int8, "chunk0_episodes", chunk0)
    cosines = cosines or {"vision": 0.9999, "trunk": 0.999, "head": 0.9995}
    gates = {n: PartGate(c, c, 8, True) for n, c in cosines.items()}
    options = Int8Options(Path("episodes"), gate=gate)
    return end_to_end_gate(None, q, gates, reference, [None] * 4, options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("delta", "passed"), [(0.0199, True), (0.0201, False)])
def test_end_to_end_mae_bound(monkeypatch: pytest.MonkeyPatch, delta: float, passed: bool) -> None:
    result, fallbacks = run_gate(monkeypatch, lambda parts: shifted(delta), GateSettings(on_failure="stop"))
    assert result["passed"] is passed and result["mae"] == pytest.approx(delta, abs=1e-12)
    assert fallbacks == [] and result["int8_parts"] == list(PARTS)  # stop: nothing falls back


@pytest.mark.parametrize(("flips", "passed"), [(2, True), (3, False)])
def test_end_to_end_sign_agreement_bound(monkeypatch: pytest.MonkeyPatch, flips: int, passed: bool) -> None:
    """98 of 100 frames agreeing is the bound (>= 0.98); 97 is under it. MAE allowed wide so only the sign decides."""
    gate = GateSettings(mae=1.0, on_failure="stop")
    result, _ = run_gate(monkeypatch, lambda parts: flipped(flips), gate)
    assert result["passed"] is passed and result["sign_agreement"] == pytest.approx(1 - flips / FRAMES)


@pytest.mark.parametrize(("read_as", "passed"), [(-0.015, True), (-0.06, False)])
def test_the_dead_band_decides_what_counts_as_a_sign_disagreement(monkeypatch: pytest.MonkeyPatch, read_as: float,
                                                                   passed: bool) -> None:
    """10 frames whose FP32 target is 0.03 (no motion: inside the 0.05 dead band). Read as -0.015 (error 0.045, within
    the band) they agree; read as -0.06 (moving backwards, error 0.09) they do not: 90% < 98%."""
    reference = REFERENCE.copy()
    reference[:10, 1] = 0.03
    deployed = reference.copy()
    deployed[:10, 1] = read_as
    result, _ = run_gate(monkeypatch, lambda parts: deployed, GateSettings(on_failure="stop"), reference=reference)
    assert result["passed"] is passed
    assert result["sign_agreement"] == pytest.approx(1.0 if passed else 0.9)


def test_the_weakest_part_falls_back_first_until_the_gate_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trunk (lowest cosine) breaks the gate: it alone falls back; the others stay INT8."""
    result, fallbacks = run_gate(monkeypatch, lambda parts: shifted(0.05 if "trunk" in parts else 0.001),
                                 GateSettings())
    assert fallbacks == ["trunk"] and result["passed"] and result["int8_parts"] == ["vision", "head"]


def test_fallback_goes_on_to_fp32_everywhere_when_every_part_breaks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    result, fallbacks = run_gate(monkeypatch, lambda parts: shifted(0.05) if parts else REFERENCE.copy(),
                                 GateSettings())
    assert fallbacks == ["trunk", "head", "vision"]  # by cosine: 0.999, 0.9995, 0.9999
    assert result["passed"] and result["int8_parts"] == [] and result["mae"] == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # signs of NaN
def test_a_nan_output_fails_even_the_widest_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    nan = shifted(0.0)
    nan[5, 1] = math.nan
    widest = GateSettings(mae=1.0, sign_agreement=1e-3, cosine=1e-3, on_failure="stop")
    result, _ = run_gate(monkeypatch, lambda parts: nan, widest)
    assert not result["passed"] and not result["finite"]
