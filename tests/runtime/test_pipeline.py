from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import ActionSettings, load_bundle
from runtime.pipeline import OutputSettings, PolicyPipeline, denormalize, onnx_runners
from runtime.preprocess import Preprocessing
from runtime.runners import Runner
from runtime.sources import synthetic_frame


class RecordingRunner:
    """Wraps a real runner and keeps copies of what the head was fed."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.feeds: list[dict[str, np.ndarray]] = []

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return self.inner.infer(feed)


def test_history_window_rolls_over_after_eight_frames(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    runners = onnx_runners(bundle)
    with ExitStack() as stack:
        for r in runners.values():
            stack.enter_context(r)
        head = RecordingRunner(runners["head"])
        trunk = RecordingRunner(runners["trunk"])
        pipeline = PolicyPipeline(bundle, {**runners, "head": head, "trunk": trunk})
        features = []
        for t in range(11):
            result = pipeline.step(synthetic_frame(t, bundle.manifest.preprocessing))
            features.append(runners["trunk"].infer(trunk.feeds[-1])["action_feature"][0])
            assert result.history_len == min(t + 1, 8)
        for t, feed in enumerate(head.feeds):
            k = min(t + 1, 8)
            assert int(feed["history_len"][0]) == k
            np.testing.assert_array_equal(feed["features"][0, :k], np.stack(features[t + 1 - k : t + 1]))
            assert not feed["features"][0, k:].any()
        pipeline.reset()
        assert pipeline.step(synthetic_frame(0, bundle.manifest.preprocessing)).history_len == 1


def test_instruction_is_tokenized_once_not_per_frame(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(demo_bundle)
    runners = onnx_runners(bundle)
    with ExitStack() as stack:
        for r in runners.values():
            stack.enter_context(r)
        pipeline = PolicyPipeline(bundle, runners, "turn left")
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
