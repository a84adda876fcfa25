"""`runtime/backends/tensorrt/backend.py` and `runner.py`: what runs here, and what runs only on a Jetson (or any CUDA
machine with TensorRT).

Here (no TensorRT, pycuda or GPU): the whole backend against the simulated GPU of tests/fakes/gpu.py. That
exercises the real orchestration (buffer linking, the on-device history, the graph capture/replay/fallback, int32
I/O of TensorRT 8.x) and checks it frame by frame against the ONNX Runtime backend; the runner's engine checks.
On the device (skipped here): parity of the real engines against ONNX Runtime, and the CUDA graph being captured."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.base import PolicyBackend
from runtime.backends.cuda import import_pycuda, import_tensorrt
from runtime.backends.onnxruntime import onnx_backend
from runtime.backends.tensorrt.backend import open_tensorrt_backend
from runtime.backends.tensorrt.engines import (
    probe,
)
from runtime.backends.tensorrt.runner import TensorRTRunner
from runtime.bundle import Bundle, load_bundle
from runtime.errors import MobileVLAError
from runtime.prompt import PromptEncoder
from runtime.sources.synthetic import synthetic_frame
from tests.fakes.gpu import FAKE_VERSION, FakeGpu


def run_side_by_side(backends: list[PolicyBackend], bundle: Bundle, episodes: list[tuple[str, int]]) -> None:
    """Same frames and instructions through each backend; chunk and history_len equal frame by frame."""
    encoder = PromptEncoder(bundle.path(bundle.manifest.prompt.tokenizer_file), bundle.manifest.prompt)
    pre = bundle.manifest.preprocessing
    index = 0
    for instruction, frames in episodes:
        text = encoder.encode(instruction)
        for backend in backends:
            backend.reset()
            backend.set_text(text)
        for t in range(frames):
            frame = synthetic_frame(index, pre)
            index += 1
            outputs = []
            for backend in backends:
                np.copyto(backend.frame[0], frame)
                outputs.append(backend.step())
            reference = outputs[0]
            assert reference.history_len == min(t + 1, bundle.manifest.policy.window)
            for other in outputs[1:]:
                assert other.history_len == reference.history_len
                np.testing.assert_allclose(other.actions, reference.actions, atol=1e-5, err_msg=f"frame {t}")


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize("int32_io", [False, True], ids=["tensorrt10", "tensorrt8-int32-io"])
def test_backend_matches_onnxruntime_and_replays_a_cuda_graph(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                              precision: str, int32_io: bool) -> None:
    fake_gpu.int32_io = int32_io
    backend = open_tensorrt_backend(engine_bundle, precision)
    reference = onnx_backend(engine_bundle, "int8" if precision == "int8" else "fp32")
    assert backend.name == f"tensorrt {FAKE_VERSION} ({precision}, cuda graph pending)"
    with reference, backend:
        # window 8: 8 fill-up frames, 1 plain warm-up, 1 captured, the rest replayed; then again after a reset
        run_side_by_side([reference, backend], engine_bundle, [("go to the box", 12), ("turn left", 11)])
        assert backend.graph == "captured" and backend.name.endswith("cuda graph captured)")
        assert fake_gpu.captures == 2 and fake_gpu.launches == 3 + 2
        assert set(backend.stage_ms) == {"vision", "trunk", "head"}
        assert all(ms >= 0 for ms in backend.stage_ms.values())
    assert fake_gpu.pushed == 0  # the primary context was popped
    assert fake_gpu.memory.blocks == {}  # every device buffer freed


def test_refused_capture_falls_back_to_plain_enqueues(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    fake_gpu.refuse_capture = True
    with onnx_backend(engine_bundle, "int8") as reference, open_tensorrt_backend(engine_bundle, "int8") as backend:
        with caplog.at_level(logging.WARNING, logger="runtime.tensorrt"):
            run_side_by_side([reference, backend], engine_bundle, [("go to the box", 12), ("go", 10)])
        assert backend.graph == "off" and "vision execute_async_v3 failed" in backend.graph_note
        assert backend.name.endswith("cuda graph off)")
        assert caplog.text.count("CUDA graph off") == 1  # logged once, not per frame or per episode
        assert fake_gpu.launches == 0


def test_unaligned_history_rows_go_through_a_copy(fake_gpu: FakeGpu, engine_bundle: Bundle,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of 256 bytes against a 512-byte alignment: the trunk writes its own buffer, a copy fills the row."""
    import runtime.backends.tensorrt.history as module

    monkeypatch.setattr(module, "TENSOR_ALIGNMENT", 512)
    with onnx_backend(engine_bundle, "fp32") as reference, open_tensorrt_backend(engine_bundle, "fp16") as backend:
        assert not backend._direct
        run_side_by_side([reference, backend], engine_bundle, [("go to the box", 11)])
        assert backend.graph == "captured"


def test_text_set_before_activation_is_uploaded_on_activate(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    encoder = PromptEncoder(engine_bundle.path(engine_bundle.manifest.prompt.tokenizer_file),
                            engine_bundle.manifest.prompt)
    text = encoder.encode("turn right")
    backend = open_tensorrt_backend(engine_bundle, "fp16")
    backend.set_text(text)
    frame = synthetic_frame(3, engine_bundle.manifest.preprocessing)
    with backend, onnx_backend(engine_bundle, "fp32") as reference:
        reference.set_text(text)
        for side in (backend, reference):
            np.copyto(side.frame[0], frame)
        np.testing.assert_allclose(backend.step().actions, reference.step().actions, atol=1e-5)


def test_runner_infer_and_engine_checks(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    entry = engine_bundle.manifest.parts["head"]
    record = entry.engines["fp16"]
    features = np.random.default_rng(0).standard_normal((1, 8, 64)).astype(np.float32)
    feed = {"features": features, "history_len": np.array([5], np.int64)}
    with TensorRTRunner(engine_bundle.path(record["file"]), entry.spec, sha256=record["sha256"]) as runner:
        got = runner.infer(feed)
    with onnx_backend(engine_bundle, "fp32") as reference:
        expected = reference.runners["head"].infer(feed)
    np.testing.assert_allclose(got["actions"], expected["actions"], atol=1e-6)
    assert fake_gpu.pushed == 0
    with pytest.raises(MobileVLAError, match=r"does not match its sha256 in the manifest .*--force-engines"):
        TensorRTRunner(engine_bundle.path(record["file"]), entry.spec, sha256="0" * 64).activate()
    other = engine_bundle.manifest.parts["trunk"].engines["fp16"]  # the trunk's engine for the head's spec
    with pytest.raises(MobileVLAError, match=r"has I/O tensors .* the manifest's head part has"):
        TensorRTRunner(engine_bundle.path(other["file"]), entry.spec).activate()
    garbage = engine_bundle.root / "engines" / "garbage.engine"
    garbage.write_bytes(b"\x00plan")
    with pytest.raises(MobileVLAError, match=f"cannot deserialize {garbage} \\(not a plan file\\)"):
        TensorRTRunner(garbage, entry.spec).activate()
    assert fake_gpu.pushed == 0 and fake_gpu.memory.blocks == {}  # failed activations clean up


def test_name_lists_each_part_when_int8_fell_back_to_fp16_somewhere(fake_gpu: FakeGpu, engine_bundle: Bundle) -> None:
    manifest = engine_bundle.manifest
    parts = {**manifest.parts, "head": replace(manifest.parts["head"], precision="fp16")}  # head failed the gate
    mixed = Bundle(engine_bundle.root, replace(manifest, parts=parts))
    backend = open_tensorrt_backend(mixed, "int8")
    assert backend.name == f"tensorrt {FAKE_VERSION} (vision int8, trunk int8, head fp16, cuda graph pending)"
    assert open_tensorrt_backend(mixed, "fp16").name == f"tensorrt {FAKE_VERSION} (fp16, cuda graph pending)"


needs_tensorrt = pytest.mark.skipif(
    import_tensorrt() is None or import_pycuda() is None,
    reason="needs TensorRT and pycuda on a CUDA machine (a Jetson: see docs/jetson.md)",
)


def device_bundle(demo_bundle: Path, precision: str) -> Bundle:
    """$MOBILE_VLA_TRT_BUNDLE or the demo bundle, with engines built on this device (else skipped, saying how)."""
    bundle = load_bundle(Path(os.environ.get("MOBILE_VLA_TRT_BUNDLE", demo_bundle)))
    reason = probe(bundle, precision).reason
    if reason is not None:
        pytest.skip(reason)
    return bundle


@needs_tensorrt
@pytest.mark.parametrize(("precision", "atol"), [("fp16", 0.02), ("int8", 0.05)])
def test_device_tensorrt_matches_onnxruntime(demo_bundle: Path, precision: str, atol: float) -> None:
    """Real engines against ONNX Runtime on the same frames, across the window roll-over and a reset.

    fp16 engines against the FP32 graphs; int8 engines against the same Q/DQ graphs run by ONNX Runtime. The chunk
    is the head's tanh output in [-1, 1]; `atol` bounds FP16/INT8 kernel differences, not model error.
    """
    bundle = device_bundle(demo_bundle, precision)
    encoder = PromptEncoder(bundle.path(bundle.manifest.prompt.tokenizer_file), bundle.manifest.prompt)
    pre = bundle.manifest.preprocessing
    with onnx_backend(bundle, "int8" if precision == "int8" else "fp32") as reference, \
            open_tensorrt_backend(bundle, precision) as backend:
        worst = 0.0
        for episode, frames in enumerate((12, 10)):
            text = encoder.encode(bundle.manifest.prompt.default_instruction)
            for side in (reference, backend):
                side.reset()
                side.set_text(text)
            for t in range(frames):
                frame = synthetic_frame(100 * episode + t, pre)
                for side in (reference, backend):
                    np.copyto(side.frame[0], frame)
                expected, got = reference.step(), backend.step()
                assert got.history_len == expected.history_len
                worst = max(worst, float(np.abs(got.actions - expected.actions).max()))
        assert worst <= atol, f"{backend.name}: max abs error {worst:.4f} against ONNX Runtime"


@needs_tensorrt
def test_device_steady_state_runs_as_a_cuda_graph(demo_bundle: Path) -> None:
    bundle = device_bundle(demo_bundle, "fp16")
    with open_tensorrt_backend(bundle, "fp16") as backend:
        for t in range(bundle.manifest.policy.window + 3):
            np.copyto(backend.frame[0], synthetic_frame(t, bundle.manifest.preprocessing))
            backend.step()
        assert backend.graph == "captured", f"CUDA graph {backend.graph}: {backend.graph_note}"
        assert all(ms > 0 for ms in backend.stage_ms.values()), backend.stage_ms

