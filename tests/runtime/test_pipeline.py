from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.backends.onnxruntime import onnx_backend
from runtime.bundle import ActionSettings, load_bundle
from runtime.errors import MobileVLAError
from runtime.pipeline import OutputSettings, PolicyPipeline, denormalize
from runtime.preprocess import Preprocessing
from runtime.sources.synthetic import synthetic_frame


def test_history_window_rolls_over_after_eight_frames(demo_bundle: Path) -> None:
    """The head sees the last min(t, 8) trunk features, left-aligned, zero rows after them (docs/design.md §2.3)."""
    bundle = load_bundle(demo_bundle)
    pre = bundle.manifest.preprocessing
    with onnx_backend(bundle) as backend:
        pipeline = PolicyPipeline(bundle, backend)
        trunk, head = backend.runners["trunk"], backend.runners["head"]
        features = []
        for t in range(11):
            result = pipeline.step(synthetic_frame(t, pre))
            features.append(trunk.outputs["action_feature"][0].copy())
            assert result.history_len == min(t + 1, 8)
            k = min(t + 1, 8)
            assert int(head.inputs["history_len"][0]) == k
            np.testing.assert_array_equal(head.inputs["features"][0, :k], np.stack(features[t + 1 - k : t + 1]))
            assert not head.inputs["features"][0, k:].any()
        # the same chunk as the head run on its own over the window
        window = np.stack(features[-8:])[None]
        alone = head.infer({"features": window, "history_len": np.array([8], np.int64)})["actions"][0]
        np.testing.assert_allclose(result.raw_chunk, alone, atol=1e-6)
        pipeline.reset()
        assert pipeline.step(synthetic_frame(0, pre)).history_len == 1


def test_instruction_is_tokenized_once_not_per_frame(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(demo_bundle)
    with onnx_backend(bundle) as backend:
        pipeline = PolicyPipeline(bundle, backend, "turn left")
        calls = []
        original = pipeline.encoder.encode
        monkeypatch.setattr(pipeline.encoder, "encode", lambda text: calls.append(text) or original(text))
        frame = synthetic_frame(0, bundle.manifest.preprocessing)
        for _ in range(5):
            pipeline.step(frame)
        assert calls == []
        pipeline.set_instruction("turn right")
        pipeline.step(frame)
        assert calls == ["turn right"]


def test_io_binding_reuses_buffers_and_matches_plain_session_run(demo_bundle: Path) -> None:
    """The bound arrays never move, and IO binding gives what a plain session.run gives."""
    import onnxruntime as ort

    bundle = load_bundle(demo_bundle)
    frame = synthetic_frame(3, bundle.manifest.preprocessing)
    with onnx_backend(bundle) as backend:
        vision = backend.runners["vision"]
        before = {name: a.ctypes.data for name, a in vision.outputs.items()}
        PolicyPipeline(bundle, backend).step(frame)
        assert {name: a.ctypes.data for name, a in vision.outputs.items()} == before
        assert backend.runners["trunk"].inputs["image_embeds"] is vision.outputs["image_embeds"]
        session = ort.InferenceSession(str(bundle.part_path("vision")), providers=["CPUExecutionProvider"])
        plain = session.run(None, {"frame": frame[None]})[0]
        np.testing.assert_allclose(vision.outputs["image_embeds"], plain, atol=1e-5)


def test_over_long_instruction_truncated_with_warning_or_rejected(demo_bundle: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(demo_bundle)
    long = "go around the box " * 30
    with onnx_backend(bundle) as backend:
        pipeline = PolicyPipeline(bundle, backend, over_long="truncate")
        pipeline.set_instruction(long)
        assert "truncated to" in caplog.text
        assert pipeline.step(synthetic_frame(0, bundle.manifest.preprocessing)).chunk.shape == (10, 2)
        strict = PolicyPipeline(bundle, backend)
        with pytest.raises(MobileVLAError, match="--max-prompt-tokens"):
            strict.set_instruction(long)


def test_denormalize_scale_and_limit() -> None:
    raw = np.array([[-1.0, 0.0], [1.0, 0.5]], dtype=np.float32)
    action = ActionSettings(norm_action=True, norm_min=(-2.0, 0.0), norm_max=(2.0, 1.0))
    np.testing.assert_allclose(denormalize(raw, action, OutputSettings()), [[-2.0, 0.5], [2.0, 0.75]])
    np.testing.assert_allclose(denormalize(raw, action, OutputSettings(scale=1.15, limit=1.5)),
                               [[-1.5, 0.575], [1.5, 0.8625]], rtol=1e-6)
    plain = ActionSettings(norm_action=False)
    np.testing.assert_array_equal(denormalize(raw, plain, OutputSettings()), raw)


def test_synthetic_frames_vary_and_match_the_bundle_format() -> None:
    pre = Preprocessing(frame_format="BGRA")
    a, b = synthetic_frame(0, pre), synthetic_frame(5, pre)
    assert a.shape == (224, 224, 4) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).mean() > 1.0
    np.testing.assert_array_equal(a, synthetic_frame(0, pre))  # deterministic
