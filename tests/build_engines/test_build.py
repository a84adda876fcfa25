from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import build_engines.build as build_module
from build_engines.adapters.robovlms import RoboVLMsAdapter
from build_engines.build import BuildOptions, build_bundle
from build_engines.cli import main as build_main
from build_engines.demo.checkpoint_writer import write_robovlms_checkpoint
from build_engines.demo.fit import FitSettings, demo_init
from build_engines.demo.policy import demo_reference_policy
from build_engines.parity import check_parity
from build_engines.presets import TINY_VOCAB, kosmos_config, tiny_head
from build_engines.reference import ReferencePolicy
from build_engines.tokenizer_gen import write_tiny_tokenizer
from build_engines.training_config import write_training_config
from runtime.bundle import ActionSettings, Bundle, load_bundle
from runtime.errors import MobileVLAError
from runtime.prompt import PromptEncoder
from runtime.sources.synthetic import synthetic_frame

DATA_DEPENDENT_OPS = {"NonZero", "ScatterND", "ScatterElements", "Loop", "If"}
UNFITTED = FitSettings(steps=0)  # export/parity tests: the demo policy without its fit (seconds, not a minute)


@pytest.fixture(scope="module")
def episodes(demo_episodes: Path) -> Path:
    return demo_episodes


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, episodes: Path) -> dict[tuple[str, str], tuple[Path, object]]:
    """One bundle per layout × head variant, from RoboVLMs-style checkpoints through the real import path."""
    root = tmp_path_factory.mktemp("matrix")
    out = {}
    for layout in ("robovlms", "mobilevla_fallback"):
        for variant in ("velocities", "actions_gripper"):
            options = BuildOptions(output=root / f"{layout}-{variant}", layout=layout, demo_head_variant=variant,
                                   parity_frames=12, episodes=episodes, fit=UNFITTED)
            result = build_bundle(options)
            out[(layout, variant)] = (result.bundle, result)
    return out


@pytest.mark.parametrize("layout", ["robovlms", "mobilevla_fallback"])
@pytest.mark.parametrize("variant", ["velocities", "actions_gripper"])
def test_parity_per_part_and_end_to_end(bundles: dict, layout: str, variant: str) -> None:
    path, _ = bundles[(layout, variant)]
    report = json.loads((path / "build_report.json").read_text())
    parity = report["parity"]
    assert parity["passed"] and parity["frames"] >= 12  # the 8-frame window rolls over
    assert parity["layout"] == layout and parity["head_variant"] == variant
    assert set(parity["parts"]) == {"vision", "trunk", "head", "end_to_end", "chunk0"}
    assert parity["parts"]["end_to_end"]["max_abs_err"] <= 1e-4
    assert parity["parts"]["head"]["max_abs_err"] <= 1e-4
    assert parity["parts"]["trunk"]["min_cosine"] > 0.99999
    readable = (path / "build_report.md").read_text()
    assert f"layout: {layout}" in readable and "| end_to_end |" in readable


def test_gripper_head_has_its_output(bundles: dict) -> None:
    path, _ = bundles[("robovlms", "actions_gripper")]
    manifest = load_bundle(path).manifest
    outputs = {t.name: t.shape for t in manifest.parts["head"].spec.outputs}
    assert outputs == {"actions": (1, 10, 2), "gripper_logits": (1, 10)}


def test_graphs_are_static_opset_17_without_data_dependent_ops(bundles: dict) -> None:
    path, _ = bundles[("mobilevla_fallback", "velocities")]
    manifest = load_bundle(path).manifest
    for name, entry in manifest.parts.items():
        model = onnx.load(str(path / entry.onnx))
        assert model.opset_import[0].version == 17
        assert not {n.op_type for n in model.graph.node} & DATA_DEPENDENT_OPS, name
        for tensor in model.graph.input:
            dims = [d.dim_value for d in tensor.type.tensor_type.shape.dim]
            assert all(d > 0 for d in dims), (name, tensor.name, dims)
    vision_input = onnx.load(str(path / "vision.onnx")).graph.input[0]
    assert vision_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    trunk_ops = {n.op_type for n in onnx.load(str(path / "trunk.onnx")).graph.node}
    assert "LayerNormalization" in trunk_ops  # opset 17 LayerNorm -> TensorRT's normalization layer


@pytest.mark.parametrize("layout", ["robovlms", "mobilevla_fallback"])
def test_any_prompt_up_to_the_maximum_matches_the_reference(bundles: dict, layout: str) -> None:
    """The trunk is exported once; shorter and longer instructions still reproduce the reference."""
    path, _ = bundles[(layout, "velocities")]
    bundle = load_bundle(path)
    policy = imported_demo_policy(bundle)
    encoder = PromptEncoder(bundle.path("tokenizer.json"), bundle.manifest.prompt)
    frames = [synthetic_frame(i, bundle.manifest.preprocessing) for i in range(3)]
    for instruction in ("stop", "go to the front of the beverage bottle on the left"):
        ids = encoder.prompt_ids(instruction)
        report = check_parity(RoboVLMsAdapter(), policy, bundle, frames, ids, instruction, 1e-4)
        assert report.passed, report.to_dict()


def imported_demo_policy(bundle: Bundle) -> ReferencePolicy:
    """The unfitted demo build's policy (same seed, same init); import is exact to 1e-8, far inside the bound."""
    policy = demo_reference_policy(seed=0, variant=bundle.manifest.policy.head_variant)
    demo_init(policy)
    return policy


def test_fallback_prompt_longer_than_64_tokens(tmp_path: Path, episodes: Path) -> None:
    result = build_bundle(BuildOptions(output=tmp_path / "long", layout="mobilevla_fallback", max_prompt_tokens=80,
                                       instruction="turn left " * 30, parity_frames=12, episodes=episodes,
                                       fit=UNFITTED))
    bundle = load_bundle(result.bundle)
    assert bundle.manifest.prompt.sequence_length == 83
    ids = PromptEncoder(bundle.path("tokenizer.json"), bundle.manifest.prompt).prompt_ids("turn left " * 30)
    assert len(ids) > 62 and result.parity.passed


def test_checkpoint_build_and_normalization_in_manifest(tmp_path: Path) -> None:
    policy = ReferencePolicy(kosmos_config("tiny"), tiny_head())
    write_robovlms_checkpoint(policy, tmp_path / "p.ckpt")
    action = ActionSettings(norm_action=True, norm_min=(-0.5, -1.0), norm_max=(0.5, 1.0))
    write_training_config(tmp_path / "c.json", policy.head_config, 4, 8.0, action)
    write_tiny_tokenizer(tmp_path / "tokenizer.json", vocab_size=TINY_VOCAB)
    code = build_main(["--checkpoint", str(tmp_path / "p.ckpt"), "--config", str(tmp_path / "c.json"),
                       "--preset", "tiny", "--tokenizer", str(tmp_path / "tokenizer.json"),
                       "--output", str(tmp_path / "b"), "--color-order", "bgr"])
    assert code == 0
    manifest = load_bundle(tmp_path / "b").manifest
    assert manifest.action.norm_min == (-0.5, -1.0) and manifest.preprocessing.color_order == "bgr"
    assert len(manifest.source["checkpoint_sha256"]) == 64
    assert manifest.source["tokenizer_sha256"] == manifest.files["tokenizer.json"]


def test_failed_build_leaves_the_previous_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 bundles: dict, episodes: Path) -> None:
    path, _ = bundles[("robovlms", "velocities")]
    target = tmp_path / "bundle"
    shutil.copytree(path, target)
    before = (target / "manifest.json").read_text()

    def broken_export(*args: object, **kwargs: object) -> None:
        raise MobileVLAError("simulated export failure")

    monkeypatch.setattr(build_module, "export_part", broken_export)
    with pytest.raises(MobileVLAError, match="simulated export failure"):
        build_bundle(BuildOptions(output=target, episodes=episodes, fit=UNFITTED))
    assert (target / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    load_bundle(target)


def test_parity_failure_stops_the_build(tmp_path: Path, episodes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_check = build_module.check_parity

    def drifted_reference(adapter: object, policy: ReferencePolicy, *args: object) -> object:
        """The reference moves after the export: the parts no longer reproduce it."""
        with torch.no_grad():
            policy.act_head.velocities.mlp[6].bias += 0.5
        return real_check(adapter, policy, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "check_parity", drifted_reference)
    options = BuildOptions(output=tmp_path / "b", parity_frames=2, episodes=episodes, fit=UNFITTED)
    with pytest.raises(MobileVLAError, match=r"do not reproduce the reference policy: .*No bundle was written"):
        build_bundle(options)
    assert not (tmp_path / "b").exists()


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_main(["--layout", "upstream", "--output", str(tmp_path / "x")]) == 2
    assert "unknown layout 'upstream'; expected one of robovlms, mobilevla_fallback" in capsys.readouterr().err
    assert build_main(["--checkpoint", str(tmp_path / "a.ckpt"), "--config", str(tmp_path / "c.json")]) == 2
    assert "--output DIR is required with --checkpoint" in capsys.readouterr().err
    assert build_main(["--config", str(tmp_path / "c.json")]) == 2
    assert "--config/--kosmos-dir need --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_replace_keeps_options_frozen() -> None:
    options = BuildOptions(output=Path("x"))
    assert replace(options, layout="mobilevla_fallback").layout == "mobilevla_fallback"
    assert np.isclose(options.parity_tolerance, 1e-4)
