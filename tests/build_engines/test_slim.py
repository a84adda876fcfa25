"""`build_engines --slim`: a bundle that holds only what the robot runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from build_engines import tensorrt_build
from build_engines.cli import main
from runtime.backends.cuda import DeviceInfo
from runtime.bundle import load_bundle
from runtime.cli import main as runtime_main

from .test_fp16 import fake_tensorrt


@pytest.fixture
def bundle(demo_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(demo_bundle, copy)
    return copy


def test_slim_keeps_only_the_device_graphs(bundle: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name for p in bundle.iterdir()}
    assert main(["--slim", "--bundle", str(bundle)]) == 0
    assert "Slimmed" in capsys.readouterr().out
    after = {p.name for p in bundle.iterdir()}
    parts = ("vision", "trunk", "head")
    assert {f"{p}.fp16.onnx" for p in parts} | {f"{p}.int8.fp16.onnx" for p in parts} <= after
    assert not after & {f"{p}.onnx" for p in parts} and not after & {f"{p}.int8.onnx" for p in parts}
    assert not [name for name in after if "cpu-int8" in name]
    assert {"manifest.json", "tokenizer.json", "accuracy_report.json"} <= after and after < before
    manifest = load_bundle(bundle).manifest  # every listed file is there, hashes verified
    assert manifest.target == "device"
    assert json.loads((bundle / "manifest.json").read_text())["target"] == "device"
    # The CPU cannot run it, and says so:
    assert runtime_main(["--bundle", str(bundle), "--backend", "onnxruntime", "--frames", "1"]) == 2
    assert "was slimmed for the device (build_engines --slim)" in capsys.readouterr().err
    # The device builds its engines from what is left:
    built: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(built))
    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: sys.modules["tensorrt"])
    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: DeviceInfo("Orin (simulated)", "8.7", 16 << 30))
    tensorrt_build.build_bundle_engines(bundle)
    assert len(built) == 6 and all(b["strongly_typed"] for b in built)


def test_slim_refuses_twice_and_without_a_bundle(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--slim"]) == 2
    assert "--slim needs --bundle DIR" in capsys.readouterr().err
    assert main(["--slim", "--bundle", str(bundle)]) == 0
    capsys.readouterr()
    assert main(["--slim", "--bundle", str(bundle)]) == 2
    assert "is already slimmed for the device; nothing to remove" in capsys.readouterr().err
