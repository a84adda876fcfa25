from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from build_engines.checkpoint import PEFT_BACKBONE, import_checkpoint, normalize_keys
from build_engines.demo.checkpoint_writer import write_kosmos_dir, write_robovlms_checkpoint
from build_engines.presets import kosmos_config, tiny_head
from build_engines.reference import ReferencePolicy
from build_engines.training_config import write_training_config
from runtime.bundle import ActionSettings
from runtime.errors import MobileVLAError

ACTION = ActionSettings(norm_action=True, norm_min=(-1.15,), norm_max=(1.15,))


def tiny_policy(variant: str = "velocities", seed: int = 0) -> ReferencePolicy:
    torch.manual_seed(seed)
    return ReferencePolicy(kosmos_config("tiny"), tiny_head(variant))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReferencePolicy, Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    policy = tiny_policy()
    write_robovlms_checkpoint(policy, root / "policy.ckpt")
    write_training_config(root / "config.json", policy.head_config, 4, 8.0, ACTION)
    return policy, root / "policy.ckpt", root / "config.json"


def max_weight_diff(a: ReferencePolicy, b: ReferencePolicy) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def edit_config(path: Path, target: Path, **changes: object) -> Path:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    target.write_text(json.dumps(data))
    return target


def edited_checkpoint(source: Path, target: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of the written checkpoint's state dict with `edit` applied, saved to `target`."""
    state = torch.load(source, weights_only=True)["state_dict"]
    edit(state)
    torch.save({"state_dict": state}, target)
    return target


def test_import_merges_lora_and_reproduces_the_policy(written: tuple[ReferencePolicy, Path, Path]) -> None:
    policy, ckpt, config = written
    raw = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(".lora_A.default.weight" in k for k in raw) and any(".base_layer.weight" in k for k in raw)
    imported = import_checkpoint(ckpt, config, preset="tiny")
    assert imported.lora_merged == 29
    assert max_weight_diff(policy, imported.policy) < 1e-6
    assert imported.policy.head_config.hidden_size == 64 and imported.policy.head_config.num_layers == 4
    assert imported.config.action.norm_max == (1.15,)


@pytest.mark.parametrize("variant", ["velocities", "actions_gripper"])
def test_frozen_base_from_a_local_kosmos_dir(tmp_path: Path, variant: str) -> None:
    policy = tiny_policy(variant, seed=1)
    write_robovlms_checkpoint(policy, tmp_path / "p.ckpt", include_frozen=False)
    write_kosmos_dir(policy, tmp_path / "kosmos")
    write_training_config(tmp_path / "c.json", policy.head_config, 4, 8.0, ACTION)
    with pytest.raises(MobileVLAError, match=r"no base weight .* Pass --kosmos-dir"):
        import_checkpoint(tmp_path / "p.ckpt", tmp_path / "c.json", preset="tiny")
    imported = import_checkpoint(tmp_path / "p.ckpt", tmp_path / "c.json", kosmos_dir=tmp_path / "kosmos")
    assert imported.filled_from_kosmos > 0
    assert imported.policy.head_config.variant == variant
    assert max_weight_diff(policy, imported.policy) < 1e-6


def test_key_normalization_handles_wrappers_and_peft_duplicates() -> None:
    t = torch.zeros(1)
    keys = normalize_keys({
        "module._forward_module.model.act_head.rnn.weight_hh_l0": t,
        "action_token": t,
        "model.backbone.base_model.model.text_model.model.layer_norm.weight": t,
        "model.model.base_model.model.text_model.model.layer_norm.weight": t,
    })
    assert sorted(keys) == ["model.act_head.rnn.weight_hh_l0", "model.action_token",
                            "model.backbone.text_model.model.layer_norm.weight"]
    only_dup = normalize_keys({"model.model.base_model.model.vision_model.x": t})
    assert list(only_dup) == ["model.backbone.vision_model.x"]


def test_missing_checkpoint_and_deepspeed_directory(tmp_path: Path,
                                                    written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, _, config = written
    with pytest.raises(MobileVLAError, match=r"checkpoint .*nope.ckpt does not exist; pass --checkpoint"):
        import_checkpoint(tmp_path / "nope.ckpt", config, preset="tiny")
    with pytest.raises(MobileVLAError, match=r"is a directory \(a DeepSpeed run\?\).*zero_to_fp32"):
        import_checkpoint(tmp_path, config, preset="tiny")


def test_not_a_torch_file(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, _, config = written
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("this is not a checkpoint")
    with pytest.raises(MobileVLAError, match=r"notes.ckpt is not a (readable )?PyTorch checkpoint"):
        import_checkpoint(bogus, config, preset="tiny")


class Payload:
    """Any class instance pickles as code to run at load time."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, _, config = written
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.action_token": torch.zeros(64)}, "callback": Payload()}, evil)
    with pytest.raises(MobileVLAError, match=r"contains pickled code or objects .* refuses to execute"):
        import_checkpoint(evil, config, preset="tiny")


def test_missing_keys_are_listed_with_count(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    def drop_layer_norm(state: dict[str, torch.Tensor]) -> None:
        for key in [k for k in state if "vision_model.model.encoder.layers.1.layer_norm" in k]:
            del state[key]

    path = edited_checkpoint(ckpt, tmp_path / "m.ckpt", drop_layer_norm)
    with pytest.raises(MobileVLAError, match=r"missing keys the policy needs: \d+ \(first: model\.backbone\.vision_"
                                             r".*pass --kosmos-dir"):
        import_checkpoint(path, config, preset="tiny")


def test_unexpected_keys_are_listed(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    extra = {"model.vision_resampler.latents": torch.zeros(3), "model.act_head.extra.weight": torch.zeros(3)}
    path = edited_checkpoint(ckpt, tmp_path / "u.ckpt", lambda state: state.update(extra))
    with pytest.raises(MobileVLAError, match=r"keys this policy does not have: 2 \(first: model\.act_head\.extra"):
        import_checkpoint(path, config, preset="tiny")


def test_mis_shaped_keys_name_the_shapes(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    short_token = {"model.action_token": torch.zeros(32)}
    path = edited_checkpoint(ckpt, tmp_path / "s.ckpt", lambda state: state.update(short_token))
    with pytest.raises(MobileVLAError, match=r"mis-shaped tensors: 1 \(first: model\.action_token \[32\] "
                                             r"\(expected \[64\]\)"):
        import_checkpoint(path, config, preset="tiny")


def test_lora_with_inconsistent_rank(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    def rank_three(state: dict[str, torch.Tensor]) -> None:
        key = next(k for k in state if k.endswith("q_proj.lora_B.default.weight"))
        state[key] = torch.zeros(state[key].shape[0], 3)

    path = edited_checkpoint(ckpt, tmp_path / "r.ckpt", rank_three)
    with pytest.raises(MobileVLAError, match=r"inconsistent LoRA rank at .*q_proj: "
                                             r"lora_A \[4, \d+\], lora_B \[\d+, 3\]"):
        import_checkpoint(path, config, preset="tiny")
    wrong_r = edit_config(config, tmp_path / "c.json", train_setup__lora_r=8)
    with pytest.raises(MobileVLAError, match=r"inconsistent LoRA rank .*lora_r = 8"):
        import_checkpoint(ckpt, wrong_r, preset="tiny")


def test_lora_without_its_base(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    removed: list[str] = []

    def drop_base(state: dict[str, torch.Tensor]) -> None:
        removed.append(next(k for k in state if k.endswith("fc1.base_layer.weight")))
        del state[removed[0]]

    path = edited_checkpoint(ckpt, tmp_path / "b.ckpt", drop_base)
    key = removed[0]
    module = key[len(PEFT_BACKBONE):].split(".base_layer")[0]
    with pytest.raises(MobileVLAError, match=rf"LoRA tensors for model\.backbone\.{module} have no base weight"):
        import_checkpoint(path, config, preset="tiny")


def test_config_missing_a_field(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    broken = edit_config(config, tmp_path / "c.json", act_head__hidden_size=None)
    with pytest.raises(MobileVLAError, match=r"has no `act_head\.hidden_size`; it is required"):
        import_checkpoint(ckpt, broken, preset="tiny")
    no_lora = edit_config(config, tmp_path / "d.json", train_setup=None)
    with pytest.raises(MobileVLAError, match=r"holds LoRA tensors .* no train_setup"):
        import_checkpoint(ckpt, no_lora, preset="tiny")
    with pytest.raises(MobileVLAError, match=r"training config .*absent.json does not exist"):
        import_checkpoint(ckpt, tmp_path / "absent.json", preset="tiny")


def test_config_contradicting_the_weights(tmp_path: Path, written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    hidden = edit_config(config, tmp_path / "h.json", act_head__hidden_size=512)
    with pytest.raises(MobileVLAError, match=r"act_head\.hidden_size = 512, but the checkpoint's LSTM has 64"):
        import_checkpoint(ckpt, hidden, preset="tiny")
    chunk = edit_config(config, tmp_path / "n.json", fwd_pred_next_n=5)
    with pytest.raises(MobileVLAError, match=r"has 20 outputs, but the training config gives fwd_pred_next_n × "
                                             r"action_dim = 10"):
        import_checkpoint(ckpt, chunk, preset="tiny")


def test_unknown_preset(written: tuple[ReferencePolicy, Path, Path]) -> None:
    _, ckpt, config = written
    with pytest.raises(MobileVLAError, match=r"unknown preset 'kosmos-3'; expected one of tiny, mid, kosmos-2"):
        import_checkpoint(ckpt, config, preset="kosmos-3")
