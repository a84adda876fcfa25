"""build_engines/demo/pinned.py: the demo fit's child process, held to the x86-64 baseline whatever the parent runs."""

from __future__ import annotations

import math
import os

import pytest

from build_engines.demo.pinned import PINNED_CPU_ENV, environment, pinned_cpu, run_pinned
from runtime.errors import MobileVLAError, check_range


def test_the_child_runs_the_baseline_on_one_thread() -> None:
    before = {name: os.environ.get(name) for name in PINNED_CPU_ENV}
    described = run_pinned(pinned_cpu)
    assert "ATen DEFAULT" in described and "1 thread(s)" in described and "MKL_CBWR=COMPATIBLE" in described
    assert {name: os.environ.get(name) for name in PINNED_CPU_ENV} == before  # the parent's environment is back


def test_a_user_error_in_the_child_reaches_the_caller_with_its_message() -> None:
    with pytest.raises(MobileVLAError, match=r"--gate-mae nan is out of range: it is not a finite number"):
        run_pinned(check_range, "--gate-mae", math.nan)


def test_environment_restores_set_and_unset_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILE_VLA_TEST_SET", "before")
    monkeypatch.delenv("MOBILE_VLA_TEST_UNSET", raising=False)
    with environment({"MOBILE_VLA_TEST_SET": "during", "MOBILE_VLA_TEST_UNSET": "during"}):
        assert os.environ["MOBILE_VLA_TEST_SET"] == os.environ["MOBILE_VLA_TEST_UNSET"] == "during"
    assert os.environ["MOBILE_VLA_TEST_SET"] == "before" and "MOBILE_VLA_TEST_UNSET" not in os.environ
