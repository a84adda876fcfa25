"""`runtime/backends/select.py`: the one backend decision, probed once; TensorRT where it can run, else ONNX
Runtime, and `--backend tensorrt` refusing with the reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runtime.backends.cuda import import_tensorrt
from runtime.backends.select import decide, open_backend
from runtime.backends.tensorrt.backend import TensorRTBackend
from runtime.bundle import Bundle, load_bundle
from runtime.config import RuntimeConfig
from runtime.errors import MobileVLAError
from tests.fakes.gpu import FAKE_VERSION, FakeGpu, with_fake_engines

needs_no_tensorrt = pytest.mark.skipif(import_tensorrt() is not None, reason="TensorRT is installed here")


@needs_no_tensorrt
def test_auto_falls_back_to_onnxruntime_and_tensorrt_refuses(demo_bundle: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(demo_bundle)
    with caplog.at_level(logging.INFO, logger="runtime"):
        choice = decide("auto", bundle, "int8")
    assert choice.backend == "onnxruntime" and "TensorRT is not installed" in choice.reason
    assert "backend onnxruntime (auto: TensorRT unavailable: TensorRT is not installed" in caplog.text
    assert decide("onnxruntime", bundle, "int8").backend == "onnxruntime"
    with pytest.raises(MobileVLAError, match=r"--backend tensorrt cannot run bundle .*TensorRT is not installed"):
        decide("tensorrt", bundle, "int8")
    with pytest.raises(MobileVLAError, match="--backend 'cuda' is not one of"):
        decide("cuda", bundle, "int8")


def test_auto_chooses_tensorrt_where_it_can_run(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    choice = decide("auto", engine_bundle, "int8")
    assert choice == type(choice)("tensorrt", "auto: the bundle's int8 engines match this TensorRT and GPU",
                                  FAKE_VERSION)  # probed once: the backend is opened with this version
    assert decide("tensorrt", engine_bundle, "fp16").reason.startswith("--backend tensorrt: the bundle's fp16")
    stale = load_bundle(with_fake_engines(engine_bundle.root, engine_bundle.root.parent / "stale", version="10.0.1.6"))
    choice = decide("auto", stale, "int8")
    assert choice.backend == "onnxruntime" and "built for TensorRT 10.0.1.6" in choice.reason


def test_open_backend_probes_once_and_opens_tensorrt(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.backends.tensorrt.engines as engines

    calls = []
    probe_once = engines.cuda_device
    monkeypatch.setattr(engines, "cuda_device", lambda: calls.append(1) or probe_once())
    backend = open_backend(RuntimeConfig(backend="auto", precision="int8"), engine_bundle)
    assert isinstance(backend, TensorRTBackend) and backend.precision == "int8"
    assert backend.tensorrt_version == FAKE_VERSION and len(calls) == 1
