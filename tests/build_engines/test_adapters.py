"""The six built-in policy families (build_engines/adapters/): each builds with parity, declares its parts and
cadences in the manifest, runs in the runtime, round-trips its checkpoint; feature-fusion's instruction part runs
once per instruction; the ensemble's weights; bad checkpoints; one INT8 build of a family with an instruction part."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from build_engines.adapters import POLICY_CHOICES, builtin_adapters, config_policy, load_adapter
from build_engines.build import BuildOptions, BuildResult, build_bundle
from build_engines.demo.checkpoint_writer import is_lora_target
from build_engines.int8 import GateSettings
from build_engines.presets import TINY_VOCAB
from build_engines.tokenizer_gen import write_tiny_tokenizer
from calibration.sampling import SampleSettings
from runtime.backends.onnxruntime import onnx_backend
from runtime.bundle import Bundle, load_bundle
from runtime.cli import main as runtime_main
from runtime.errors import MobileVLAError
from runtime.pipeline import PolicyPipeline
from runtime.sources.synthetic import synthetic_frame

FAMILIES = ("robovlms-lstm", "robovlms-mlp", "feature-fusion", "clip-lstm", "clip-mlp", "ensemble")
TEXT = None  # the family's instruction-cadence part: its name is the adapter's (checked against the adapter below)
# (part, cadence) in run order, as each family declares them (docs/design.md §2.6-§2.8)
DECLARED: dict[str, tuple[tuple[str | None, str], ...]] = {
    "robovlms-lstm": (("vision", "frame"), ("trunk", "frame"), ("head", "window")),
    "robovlms-mlp": (("vision", "frame"), ("trunk", "frame"), ("head", "frame")),
    "feature-fusion": (("vision", "frame"), (TEXT, "instruction"), ("head", "frame")),
    "clip-lstm": (("vision", "frame"), (TEXT, "instruction"), ("head", "window")),
    "clip-mlp": (("vision", "frame"), (TEXT, "instruction"), ("head", "frame")),
    "ensemble": (("vision", "frame"), ("trunk", "frame"), ("head", "window")),
}
WINDOW = {"robovlms-lstm": 8, "robovlms-mlp": 1, "feature-fusion": 1, "clip-lstm": 8, "clip-mlp": 1, "ensemble": 8}
# What the head reads: window(...) for the LSTM heads, the current frame's feature for the others
HEAD_SOURCES = {
    "robovlms-lstm": {"features": "window(trunk.action_feature)", "history_len": "history_len"},
    "robovlms-mlp": {"action_feature": "trunk.action_feature"},
    "feature-fusion": {"vision_feature": "vision.vision_feature", "text_feature": "{text}.text_feature"},
    "clip-lstm": {"features": "window(vision.image_feature)", "text_feature": "{text}.text_feature",
                  "history_len": "history_len"},
    "clip-mlp": {"image_feature": "vision.image_feature", "text_feature": "{text}.text_feature"},
    "ensemble": {"features": "window(trunk.action_feature)", "history_len": "history_len"},
}
TOLERANCE = 1e-4
PARITY_FRAMES = 4
FRAMES = 20
SEED = 0


def options(output: Path, family: str | None, **changes: Any) -> BuildOptions:
    """The cheapest build of a family: tiny preset, 4 parity frames, no TensorRT engines."""
    settings: dict[str, Any] = dict(output=output, policy=family, random_weights=True, preset="tiny", engines=False,
                                    parity_frames=PARITY_FRAMES, seed=SEED)
    settings.update(changes)
    return BuildOptions(**settings)


class Builds:
    """One build per (family, options) for the whole module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: dict[tuple[str, tuple[tuple[str, str], ...]], BuildResult] = {}

    def get(self, family: str, policy_options: tuple[tuple[str, str], ...] = ()) -> BuildResult:
        key = (family, policy_options)
        if key not in self.results:
            output = self.root / f"{family}-{len(self.results)}"
            self.results[key] = build_bundle(options(output, family, policy_options=policy_options))
        return self.results[key]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("families"))


def text_part(bundle: Bundle) -> str | None:
    names = bundle.plan.instruction_parts
    assert len(names) <= 1
    return names[0] if names else None


def run_frames(path: Path, frames: int = FRAMES, instruction: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """`frames` synthetic frames through ONNX Runtime and the runtime pipeline: (chunks, raw chunks, history)."""
    bundle = load_bundle(path)
    pre = bundle.manifest.preprocessing
    with onnx_backend(bundle) as backend:
        pipeline = PolicyPipeline(bundle, backend, instruction)
        results = [pipeline.step(synthetic_frame(t, pre)) for t in range(frames)]
    return (np.stack([r.chunk for r in results]), np.stack([r.raw_chunk for r in results]),
            [r.history_len for r in results])


def test_the_registry_is_the_six_families() -> None:
    assert tuple(builtin_adapters()) == FAMILIES == POLICY_CHOICES
    for family, cls in builtin_adapters().items():
        assert cls.family == family and cls.summary


@pytest.mark.parametrize("family", FAMILIES)
def test_family_builds_and_passes_parity(builds: Builds, family: str) -> None:
    result = builds.get(family)
    parity = result.parity
    manifest = load_bundle(result.bundle).manifest
    assert parity.passed and parity.family == family and parity.frames == PARITY_FRAMES
    assert set(parity.parts) == {*manifest.parts, "end_to_end", "chunk0"}
    for name, part in parity.parts.items():
        assert part.stats.samples == PARITY_FRAMES, name
        assert part.stats.non_finite == 0, name
        assert part.stats.max_abs_err <= TOLERANCE, (name, part.stats.max_abs_err)
    assert parity.parts["end_to_end"].tolerance == TOLERANCE
    assert result.report["parity"]["passed"] and result.report["parity"]["family"] == family
    assert result.report["engines_skipped"] == "--no-engines"
    assert result.int8 is None


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_holds_the_familys_parts_and_cadences(builds: Builds, family: str) -> None:
    bundle = load_bundle(builds.get(family).bundle)
    manifest = bundle.manifest
    assert manifest.policy.family == family
    assert manifest.source["policy"] == {"family": family, "options": {}}
    text = text_part(bundle)
    declared = [(name or text, cadence) for name, cadence in DECLARED[family]]
    assert [(name, entry.spec.cadence) for name, entry in manifest.parts.items()] == declared
    assert manifest.policy.window == WINDOW[family]
    head = manifest.parts["head"].spec
    assert dict(head.sources) == {k: v.format(text=text) for k, v in HEAD_SOURCES[family].items()}
    actions = next(t for t in head.outputs if t.name == "actions")
    assert actions.shape == (1, manifest.policy.chunk, manifest.policy.action_dim)
    if text is not None:  # the text-encoder families: the instruction's ids, run once per instruction
        spec = manifest.parts[text].spec
        assert {source for _, source in spec.sources} <= {"text.input_ids", "text.attention_mask",
                                                          "text.action_index"}
        assert manifest.prompt.layout == "text"
    plan = bundle.plan
    assert (plan.window_link is not None and plan.window_link.consumer == "head") == (WINDOW[family] > 1)
    assert plan.frame_parts == tuple(n for n, c in declared if c != "instruction")
    # what the adapter declares, field for field, for a fresh policy of the same shapes
    adapter = load_adapter(family)
    model = adapter.random_policy("tiny", SEED).policy
    parts = adapter.parts(model, manifest.preprocessing, manifest.prompt)
    assert {p.name: p.spec for p in parts} == {name: entry.spec for name, entry in manifest.parts.items()}
    assert asdict(adapter.settings(model)) == asdict(manifest.policy)


def test_mlp_head_reads_one_frame_and_keeps_no_lstm(builds: Builds) -> None:
    manifest = load_bundle(builds.get("robovlms-mlp").bundle).manifest
    assert (manifest.policy.window, manifest.policy.lstm_hidden) == (1, 0)
    assert manifest.policy.details == {"head": "mlp"}
    head = manifest.parts["head"].spec
    assert [(t.name, t.shape) for t in head.inputs] == [("action_feature", (1, manifest.policy.text_dim))]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_in_the_runtime_deterministically(builds: Builds, family: str) -> None:
    path = builds.get(family).bundle
    manifest = load_bundle(path).manifest
    chunks, raw, history = run_frames(path)
    assert chunks.shape == (FRAMES, manifest.policy.chunk, manifest.policy.action_dim)
    assert np.isfinite(chunks).all() and np.isfinite(raw).all()
    window = WINDOW[family]
    assert history == [min(t + 1, window) for t in range(FRAMES)]
    assert len(np.unique(chunks[:, 0], axis=0)) > 1  # the velocity follows the frames
    again, _, _ = run_frames(path)
    np.testing.assert_array_equal(again[:, 0], chunks[:, 0])  # velocities of an independent second run
    np.testing.assert_array_equal(again, chunks)


class CountingText:
    """Counts the backend's set_text calls."""

    def __init__(self, backend: Any) -> None:
        self.calls = 0
        self.original = backend.set_text

    def __call__(self, text: Any) -> None:
        self.calls += 1
        self.original(text)


@pytest.mark.parametrize("family", ["feature-fusion", "clip-lstm", "clip-mlp"])
def test_instruction_part_runs_once_per_instruction(builds: Builds, family: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(builds.get(family).bundle)
    text = text_part(bundle)
    assert text is not None
    pre = bundle.manifest.preprocessing
    instructions = {0: "turn left", 10: "go to the front of the bottle", 20: "stop"}
    with onnx_backend(bundle) as backend:
        counter = CountingText(backend)
        monkeypatch.setattr(backend, "set_text", counter)
        pipeline = PolicyPipeline(bundle, backend)  # sets the bundle's default instruction: the first run
        assert backend.instruction_runs == 1 and counter.calls == 1
        features = []
        for t in range(30):
            if t in instructions:
                pipeline.set_instruction(instructions[t])
            pipeline.step(synthetic_frame(t, pre))
            features.append(backend.runners[text].outputs["text_feature"].copy())
        assert counter.calls == 1 + len(instructions) == 4
        assert backend.instruction_runs == counter.calls  # not once per frame (30)
        assert backend.stage_ms[text] > 0.0
        for start in instructions:  # the cached feature stays put between instruction changes
            for t in range(start, start + 10):
                np.testing.assert_array_equal(features[t], features[start])
        assert not np.array_equal(features[0], features[10]) and not np.array_equal(features[10], features[20])


def test_feature_fusion_chunk_follows_the_instruction(builds: Builds) -> None:
    bundle = load_bundle(builds.get("feature-fusion").bundle)
    frame = synthetic_frame(5, bundle.manifest.preprocessing)
    with onnx_backend(bundle) as backend:
        pipeline = PolicyPipeline(bundle, backend, "turn left")
        left = pipeline.step(frame).chunk
        left_again = pipeline.step(frame).chunk  # no history: the same frame, the same chunk
        pipeline.set_instruction("go around the box to the right")
        right = pipeline.step(frame).chunk
        pipeline.set_instruction("turn left")
        back = pipeline.step(frame).chunk
    np.testing.assert_array_equal(left, left_again)
    np.testing.assert_array_equal(left, back)
    assert np.abs(left - right).max() > 1e-6, np.abs(left - right).max()


def test_benchmark_reports_the_instruction_part_once(builds: Builds, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = builds.get("feature-fusion").bundle
    text = text_part(load_bundle(path))
    report = tmp_path / "bench.json"
    capsys.readouterr()
    assert runtime_main(["--bundle", str(path), "--source", "synthetic", "--frames", "20", "--warmup", "5",
                         "--benchmark", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if "per instruction" in line]
    assert len(lines) == 1 and lines[0].split()[0] == text, printed
    assert lines[0].endswith("ms per instruction: ran 1x in 20 frames (cached between instruction changes)")
    stages = json.loads(report.read_text())
    assert set(stages["instruction_parts"]) == {text} and stages["instruction_parts"][text]["runs"] == 1
    assert stages["instruction_parts"][text]["last_ms"] > 0
    assert {"vision", "head"} <= set(stages["stages_ms"]) and text not in stages["stages_ms"]  # not per frame


@pytest.mark.parametrize("family", ["robovlms-lstm", "robovlms-mlp", "ensemble"])
def test_trunk_families_have_no_instruction_part(builds: Builds, family: str) -> None:
    bundle = load_bundle(builds.get(family).bundle)
    assert bundle.plan.instruction_parts == ()
    with onnx_backend(bundle) as backend:
        pipeline = PolicyPipeline(bundle, backend)
        pipeline.set_instruction("stop")
        pipeline.step(synthetic_frame(0, bundle.manifest.preprocessing))
        assert backend.instruction_runs == 0  # the trunk reads the text every frame


def test_ensemble_records_its_weights(builds: Builds) -> None:
    default = load_bundle(builds.get("ensemble").bundle).manifest
    assert default.policy.details == {"head": "ensemble", "weights": [0.5, 0.5], "mlp_hidden": 64}
    chosen = builds.get("ensemble", (("weights", "0.7,0.3"),))
    manifest = load_bundle(chosen.bundle).manifest
    assert manifest.policy.details["weights"] == [0.7, 0.3]
    assert manifest.source["policy"] == {"family": "ensemble", "options": {"weights": "0.7,0.3"}}


def test_ensemble_with_weights_1_0_is_the_lstm_policy(builds: Builds) -> None:
    """Same seed: the backbone, action token and LSTM head are drawn first, in the same order as robovlms-lstm's;
    weights 1,0 drop the MLP head, so the chunk is the LSTM policy's."""
    lstm, _, _ = run_frames(builds.get("robovlms-lstm").bundle, frames=12)
    only_lstm, _, _ = run_frames(builds.get("ensemble", (("weights", "1,0"),)).bundle, frames=12)
    mixed, _, _ = run_frames(builds.get("ensemble").bundle, frames=12)
    np.testing.assert_allclose(only_lstm, lstm, atol=1e-6, rtol=0)
    assert np.abs(mixed - lstm).max() > 1e-4  # 0.5,0.5: the MLP head counts


@pytest.mark.parametrize("weights", ["a,b", "1", "1,2,3", "-1,2", "0,0", "nan,1", ""])
def test_ensemble_refuses_bad_weights(weights: str, tmp_path: Path) -> None:
    adapter = load_adapter("ensemble", {"weights": weights})
    message = f"--policy-option weights={weights} must be two non-negative numbers with a positive sum"
    with pytest.raises(MobileVLAError, match=message.replace(".", r"\.")):
        adapter.random_policy("tiny", SEED)
    with pytest.raises(MobileVLAError, match=r"--policy-option weights=.* must be two non-negative numbers"):
        build_bundle(options(tmp_path / "b", "ensemble", policy_options=(("weights", weights),)))
    assert not (tmp_path / "b").exists()


def test_unknown_policy_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MobileVLAError, match=r"--policy-option weight is not an option of the ensemble family; its "
                                             r"options: weights \(LSTM,MLP weights"):
        load_adapter("ensemble", {"weight": "1,0"})
    with pytest.raises(MobileVLAError, match="--policy-option weights is not an option of the clip-mlp family; its "
                                             "options: none"):
        build_bundle(options(tmp_path / "b", "clip-mlp", policy_options=(("weights", "1,0"),)))
    assert not (tmp_path / "b").exists()


def lora_keys(model: torch.nn.Module) -> set[str]:
    """The RoboVLMs families' LoRA-target weights: the writer splits each into base + B@A, the import merges it
    back, so they return within float rounding, not bit for bit."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(model, "action_token"):
        return set()
    return {f"backbone.{name}.weight" for name, module in backbone.named_modules() if is_lora_target(name, module)}


def written(family: str, directory: Path, seed: int = 3) -> tuple[Any, Path, Path]:
    adapter = load_adapter(family)
    imported = adapter.random_policy("tiny", seed)
    checkpoint, config = directory / f"{family}.ckpt", directory / f"{family}.json"
    adapter.write_checkpoint(imported, checkpoint, config, seed)
    return imported, checkpoint, config


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip(family: str, tmp_path: Path) -> None:
    adapter = load_adapter(family)
    imported, checkpoint, config = written(family, tmp_path)
    back = adapter.import_checkpoint(checkpoint, config, None, "tiny")
    assert back.checkpoint == checkpoint
    want, got = imported.policy.state_dict(), back.policy.state_dict()
    assert list(got) == list(want)
    merged = lora_keys(imported.policy)
    assert back.lora_merged == len(merged)  # 0 for the families without LoRA
    for key, value in want.items():
        if key in merged:
            torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0)
        else:
            assert torch.equal(got[key], value), key
    assert back.config.action == imported.config.action
    assert asdict(adapter.settings(back.policy)) == asdict(adapter.settings(imported.policy))
    assert adapter.vocab_size(back.policy) == adapter.vocab_size(imported.policy) == TINY_VOCAB


@pytest.mark.parametrize(("family", "named"), [
    ("robovlms-lstm", "robovlms-lstm"), ("robovlms-mlp", "robovlms-mlp"),  # act_head.type
    ("feature-fusion", "feature-fusion"), ("clip-lstm", "clip-lstm"), ("clip-mlp", "clip-mlp"),  # policy_family
    ("ensemble", "ensemble"),  # policy_family: its LSTM decoder type alone would say robovlms-lstm
])
def test_config_policy_of_a_written_config(family: str, named: str, tmp_path: Path) -> None:
    _, _, config = written(family, tmp_path)
    assert config_policy(config) == named


def test_config_policy_without_a_config(tmp_path: Path) -> None:
    assert config_policy(None) is None and config_policy(tmp_path / "absent.json") is None
    (tmp_path / "c.json").write_text('{"act_head": {"type": "SomethingElse"}}')
    assert config_policy(tmp_path / "c.json") is None
    assert BuildOptions(output=tmp_path, config=tmp_path / "c.json").family == "robovlms-lstm"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    write_tiny_tokenizer(path, vocab_size=TINY_VOCAB)
    return path


@pytest.mark.parametrize("family", ["feature-fusion", "clip-lstm", "robovlms-mlp"])
def test_checkpoint_build_picks_the_family_from_the_config(family: str, tmp_path: Path, tokenizer: Path,
                                                           builds: Builds) -> None:
    """The written checkpoint of the module's random-weights policy (same seed) builds with no --policy, through
    the adapter's import, and runs as the random-weights build does."""
    _, checkpoint, config = written(family, tmp_path, seed=SEED)
    result = build_bundle(options(tmp_path / "b", None, random_weights=False, checkpoint=checkpoint, config=config,
                                  tokenizer=tokenizer))
    assert result.parity.passed and result.parity.family == family
    assert result.parity.parts["end_to_end"].stats.max_abs_err <= TOLERANCE
    manifest = load_bundle(result.bundle).manifest
    assert manifest.policy.family == family
    assert manifest.source["checkpoint"] == str(checkpoint) and len(manifest.source["checkpoint_sha256"]) == 64
    assert manifest.source["tokenizer_sha256"] == manifest.files["tokenizer.json"]
    from_checkpoint, _, _ = run_frames(result.bundle, frames=10)
    random_weights, _, _ = run_frames(builds.get(family).bundle, frames=10)
    np.testing.assert_allclose(from_checkpoint, random_weights, atol=1e-5, rtol=0)


def test_ensemble_checkpoint_builds_by_its_config_and_not_as_another_family(tmp_path: Path, tokenizer: Path) -> None:
    _, checkpoint, config = written("ensemble", tmp_path)
    forced = options(tmp_path / "b", "robovlms-lstm", random_weights=False, checkpoint=checkpoint, config=config,
                     tokenizer=tokenizer)
    with pytest.raises(MobileVLAError, match=r"has keys this policy does not have: \d+ \(first: model\.mlp_head\..*"
                                             r"with a lstm head \(--policy\)"):
        build_bundle(forced)
    assert not (tmp_path / "b").exists()
    result = build_bundle(options(tmp_path / "b", None, random_weights=False, checkpoint=checkpoint,
                                  config=config, tokenizer=tokenizer))
    assert result.parity.passed and load_bundle(result.bundle).manifest.policy.family == "ensemble"


def damaged_fusion(tmp_path: Path, change: Any) -> tuple[Path, Path]:
    _, checkpoint, config = written("feature-fusion", tmp_path)
    saved = torch.load(checkpoint, weights_only=True)
    change(saved["state_dict"])
    torch.save(saved, checkpoint)
    return checkpoint, config


def test_fusion_checkpoint_missing_a_key(tmp_path: Path) -> None:
    checkpoint, config = damaged_fusion(tmp_path, lambda state: state.pop("model.mlp.6.bias"))
    with pytest.raises(MobileVLAError, match=r"is missing keys the policy needs: 1 \(first: mlp\.6\.bias\)\. Frozen "
                                             r"backbone weights left out\? Pass --kosmos-dir"):
        load_adapter("feature-fusion").import_checkpoint(checkpoint, config, None, "tiny")


def test_fusion_checkpoint_with_an_extra_key(tmp_path: Path) -> None:
    checkpoint, config = damaged_fusion(tmp_path, lambda state: state.update({"model.mlp.8.weight": torch.ones(2)}))
    with pytest.raises(MobileVLAError, match=r"has keys this policy does not have: 1 \(first: mlp\.8\.weight\)\. Is "
                                             r"it a feature-fusion policy"):
        load_adapter("feature-fusion").import_checkpoint(checkpoint, config, None, "tiny")


def test_fusion_checkpoint_with_a_misshaped_or_nan_tensor(tmp_path: Path, tokenizer: Path) -> None:
    checkpoint, config = damaged_fusion(
        tmp_path, lambda state: state.update({"model.text_proj.bias": torch.zeros(3)}))
    with pytest.raises(MobileVLAError, match=r"mis-shaped tensors: 1 \(first: text_proj\.bias \[3\] \(expected "
                                             r"\[256\]\)\)"):
        build_bundle(options(tmp_path / "b", None, random_weights=False, checkpoint=checkpoint, config=config,
                             tokenizer=tokenizer))
    assert not (tmp_path / "b").exists()

    def poison(state: dict[str, torch.Tensor]) -> None:
        state["model.vision_proj.weight"][0, 0] = float("nan")

    checkpoint, config = damaged_fusion(tmp_path, poison)
    with pytest.raises(MobileVLAError, match=r"tensors with NaN or infinite values: 1 \(first: "
                                             r"model\.vision_proj\.weight \(1 NaN, 0 inf of 8192\)\)"):
        load_adapter("feature-fusion").import_checkpoint(checkpoint, config, None, "tiny")


def test_feature_fusion_int8_gates_every_part(tmp_path: Path, demo_episodes: Path) -> None:
    result = build_bundle(options(tmp_path / "b", "feature-fusion", int8=True, episodes=demo_episodes,
                                  sample=SampleSettings(frames=16, held_out_fraction=0.125),
                                  gate=GateSettings(part_frames=16)))
    assert result.int8 is not None
    gate = result.int8.report["gate"]
    bundle = load_bundle(result.bundle)
    text = text_part(bundle)
    assert text is not None
    assert set(gate["parts"]) == {"vision", text, "head"}
    for name, part in gate["parts"].items():
        assert part["passed"] and part["samples"] == 16 and part["cosine_mean"] >= 0.99, name
    end_to_end = gate["end_to_end"]
    assert end_to_end["passed"] and end_to_end["finite"]
    assert end_to_end["episodes"] == 4  # one held-out episode per scenario
    assert end_to_end["mae"] <= 0.02 and end_to_end["sign_agreement"] >= 0.98
    assert end_to_end["int8_parts"] == ["vision", text, "head"]
    assert {name: entry.precision for name, entry in bundle.manifest.parts.items()} == dict.fromkeys(
        ["vision", text, "head"], "int8")
    assert bundle.manifest.warnings == ()
