"""`runtime/backends/tensorrt/engines.py`: which engine a part runs, engine compatibility with this TensorRT and GPU,
the engine I/O check, and the probe's reason when TensorRT is missing (pure functions of the manifest)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runtime.backends.cuda import DeviceInfo
from runtime.backends.tensorrt.backend import open_tensorrt_backend
from runtime.backends.tensorrt.engines import (
    EngineTensor,
    check_engine_io,
    engine_precision,
    engines_unavailable_reason,
    probe,
)
from runtime.bundle import Bundle, load_bundle
from runtime.errors import MobileVLAError
from runtime.specs import PartSpec, TensorSpec
from tests.fakes.gpu import FAKE_DEVICE, FAKE_VERSION
from tests.runtime.backends.test_select import needs_no_tensorrt


@needs_no_tensorrt
def test_without_tensorrt_the_reason_says_so_and_open_refuses(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    reason = probe(bundle, "int8").reason
    assert reason is not None and reason.startswith("TensorRT is not installed") and "docs/jetson.md" in reason
    with pytest.raises(MobileVLAError, match=f"cannot run bundle {bundle.root}: TensorRT is not installed"):
        open_tensorrt_backend(bundle, "int8")


def test_tensorrt_precisions_only(demo_bundle: Path) -> None:
    reason = probe(load_bundle(demo_bundle), "fp32").reason
    assert reason == "TensorRT runs fp16 or int8 engines, not fp32"


def test_engine_precision_follows_the_int8_gate(demo_bundle: Path) -> None:
    entry = load_bundle(demo_bundle).manifest.parts["trunk"]
    assert entry.precision == "int8"
    assert engine_precision(entry, "int8") == "int8"
    assert engine_precision(entry, "fp16") == "fp16"
    assert engine_precision(replace(entry, precision="fp16"), "int8") == "fp16"  # failed the gate: FP16 engine


def test_current_engines_are_runnable(engine_bundle: Bundle) -> None:
    assert engines_unavailable_reason(engine_bundle, "int8", FAKE_VERSION, FAKE_DEVICE) is None
    assert engines_unavailable_reason(engine_bundle, "fp16", FAKE_VERSION, FAKE_DEVICE) is None


def test_engines_not_built(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    reason = engines_unavailable_reason(bundle, "int8", FAKE_VERSION, FAKE_DEVICE)
    assert reason == (f"engines not built: the vision part has no int8 TensorRT engine; build them on this device: "
                      f"`build_engines --engines-only --bundle {bundle.root}`")


@pytest.mark.parametrize(("version", "device", "built"), [
    ("8.6.2.3", FAKE_DEVICE, "TensorRT 10.3.0.30 on Orin (sm 8.7)"),
    (FAKE_VERSION, DeviceInfo("NVIDIA GeForce RTX 3060", "8.6", 12 << 30), "TensorRT 10.3.0.30 on Orin (sm 8.7)"),
])
def test_engines_for_another_tensorrt_or_gpu_are_refused_with_the_rebuild_command(
        engine_bundle: Bundle, version: str, device: DeviceInfo, built: str) -> None:
    reason = engines_unavailable_reason(engine_bundle, "int8", version, device)
    assert reason == (f"the vision int8 engine was built for {built} but this machine has TensorRT {version} on "
                      f"{device.name} (sm {device.compute_capability}): rebuild on this device with "
                      f"`build_engines --engines-only --bundle {engine_bundle.root}`")


def test_missing_or_truncated_engine_file(engine_bundle: Bundle) -> None:
    trunk = engine_bundle.root / "engines" / "trunk.int8.engine"
    trunk.write_bytes(trunk.read_bytes()[:-1])
    reason = engines_unavailable_reason(engine_bundle, "int8", FAKE_VERSION, FAKE_DEVICE)
    assert reason is not None and "engines/trunk.int8.engine has" in reason
    assert f"build_engines --engines-only --force-engines --bundle {engine_bundle.root}" in reason
    trunk.unlink()
    reason = engines_unavailable_reason(engine_bundle, "int8", FAKE_VERSION, FAKE_DEVICE)
    assert reason is not None and reason.startswith("engine file engines/trunk.int8.engine is missing")


def test_engine_io_must_match_the_part_spec() -> None:
    spec = PartSpec("head", inputs=(TensorSpec("features", "float32", (1, 8, 64)),
                                    TensorSpec("history_len", "int64", (1,))),
                    outputs=(TensorSpec("actions", "float32", (1, 10, 2)),), opset=17, tolerance=1e-4)
    good = {"features": EngineTensor("features", True, "float32", (1, 8, 64)),
            "history_len": EngineTensor("history_len", True, "int32", (1,)),  # TensorRT 8.x: int64 inputs -> int32
            "actions": EngineTensor("actions", False, "float32", (1, 10, 2))}
    check_engine_io(Path("head.engine"), spec, good, "REBUILD")
    half = {**good, "actions": EngineTensor("actions", False, "float16", (1, 10, 2))}
    with pytest.raises(MobileVLAError, match=r"head.engine: tensor actions is output float16\[1, 10, 2\]; the "
                                             r"manifest's head part expects output float32\[1, 10, 2\] .*`REBUILD`"):
        check_engine_io(Path("head.engine"), spec, half, "REBUILD")
    dynamic = {**good, "features": EngineTensor("features", True, "float32", (1, -1, 64))}
    with pytest.raises(MobileVLAError, match=r"features is input float32\[1, -1, 64\]"):
        check_engine_io(Path("head.engine"), spec, dynamic, "REBUILD")
    renamed = {**good, "chunk": good["actions"]}
    del renamed["actions"]
    with pytest.raises(MobileVLAError, match=r"has I/O tensors .*'chunk'.* another bundle: rebuild it with `REBUILD`"):
        check_engine_io(Path("head.engine"), spec, renamed, "REBUILD")
