"""RoboVLMs checkpoint import (DESIGN §2.4) and a writer of RoboVLMs-style checkpoints for the demo and tests.

Import: `torch.load(weights_only=True)` (a checkpoint is untrusted input) -> state dict -> key normalization
(`module.`, `_forward_module.`, `model.` prefix, PEFT wrappers) -> LoRA merge -> head variant and sizes detected from
the keys and shapes -> cross-check against the training config -> `ReferencePolicy`.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from build_engines.presets import HeadConfig, kosmos_config, with_eager_attention
from build_engines.reference import ReferencePolicy
from runtime.bundle import ActionSettings
from runtime.errors import MobileVLAError
from runtime.preprocess import CLIP_MEAN, CLIP_STD

log = logging.getLogger("build_engines.checkpoint")

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "dense")
STRIP_PREFIXES = ("module.", "_forward_module.")
PEFT_BACKBONE = "model.backbone.base_model.model."
PEFT_DUPLICATE = "model.model.base_model.model."
IGNORED_SUFFIXES = ("lm_head.weight", "position_ids", "embed_positions.weights")
SHOW = 5  # how many offending keys an error message lists


@dataclass(frozen=True)
class TrainingConfig:
    """The fields of a RoboVLMs training config this project uses."""

    window_size: int
    fwd_pred_next_n: int
    action_dim: int
    hidden_size: int
    lora_enable: bool
    lora_r: int | None
    lora_alpha: float | None
    action: ActionSettings
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    raw: dict[str, Any]

    @property
    def data_dir(self) -> Path | None:
        """The training episodes (`train_dataset.data_dir`): the default calibration data for `--int8`."""
        dataset = self.raw.get("train_dataset")
        value = dataset.get("data_dir") if isinstance(dataset, dict) else None
        return Path(value) if value else None


@dataclass
class ImportedPolicy:
    policy: ReferencePolicy
    config: TrainingConfig
    checkpoint: Path | None
    lora_merged: int
    filled_from_kosmos: int


def default_training_config(head: HeadConfig, action: ActionSettings) -> TrainingConfig:
    """The config a checkpoint-less (random-weight) policy is described by."""
    return TrainingConfig(
        window_size=head.window, fwd_pred_next_n=head.chunk, action_dim=head.action_dim, hidden_size=head.hidden_size,
        lora_enable=False, lora_r=None, lora_alpha=None, action=action, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        raw={},
    )


def _require(data: Mapping[str, Any], path: str, source: Path) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise MobileVLAError(
                f"training config {source} has no `{path}`; it is required. Use the JSON the checkpoint was trained "
                f"with (RoboVLMs writes it next to the run)"
            )
        node = node[part]
    return node


def _triple(values: Any, key: str, source: Path) -> tuple[float, float, float]:
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise MobileVLAError(f"training config {source}: `{key}` must be a list of 3 numbers, got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _as_tuple(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, list | tuple) else (float(value),)


def read_training_config(path: Path) -> TrainingConfig:
    if not path.is_file():
        raise MobileVLAError(f"training config {path} does not exist; pass --config with the run's JSON config")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MobileVLAError(f"training config {path} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise MobileVLAError(f"training config {path} must hold a JSON object")
    setup = raw.get("train_setup") or {}
    lora = bool(setup.get("lora_enable", False))
    norm = bool(raw.get("norm_action", False))
    return TrainingConfig(
        window_size=int(_require(raw, "window_size", path)),
        fwd_pred_next_n=int(_require(raw, "fwd_pred_next_n", path)),
        action_dim=int(_require(raw, "act_head.action_dim", path)),
        hidden_size=int(_require(raw, "act_head.hidden_size", path)),
        lora_enable=lora,
        lora_r=int(_require(raw, "train_setup.lora_r", path)) if lora else None,
        lora_alpha=float(_require(raw, "train_setup.lora_alpha", path)) if lora else None,
        action=ActionSettings(
            norm_action=norm,
            norm_min=_as_tuple(_require(raw, "norm_min", path)) if norm else (-1.0,),
            norm_max=_as_tuple(_require(raw, "norm_max", path)) if norm else (1.0,),
        ),
        image_mean=_triple(raw.get("image_mean", list(CLIP_MEAN)), "image_mean", path),
        image_std=_triple(raw.get("image_std", list(CLIP_STD)), "image_std", path),
        raw=raw,
    )


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """`torch.load(weights_only=True)` with messages for each way a checkpoint file can be wrong."""
    if path.is_dir():
        raise MobileVLAError(
            f"checkpoint {path} is a directory (a DeepSpeed run?). Convert it with its `zero_to_fp32.py` into a "
            f".pt file and pass that"
        )
    if not path.is_file():
        raise MobileVLAError(f"checkpoint {path} does not exist; pass --checkpoint with a .ckpt/.pt file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            raise MobileVLAError(
                f"checkpoint {path} contains pickled code or objects other than tensors and plain containers, which "
                f"this tool refuses to execute (weights_only). Re-save only the weights, e.g. "
                f"torch.save({{'state_dict': model.state_dict()}}, path)"
            ) from exc
        raise MobileVLAError(f"checkpoint {path} is not a PyTorch checkpoint ({text.splitlines()[0]})") from exc
    except Exception as exc:  # torch.load raises many types (RuntimeError, IndexError, zip errors) on non-checkpoints
        raise MobileVLAError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0]}); is it truncated "
            f"or another format?"
        ) from exc
    if not isinstance(loaded, dict):
        raise MobileVLAError(f"checkpoint {path} holds a {type(loaded).__name__}, expected a dict of tensors")
    for key in ("state_dict", "model_state_dict"):
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, Tensor)}
    if not tensors:
        raise MobileVLAError(
            f"checkpoint {path} has no tensors under `state_dict`, `model_state_dict` or its top level"
        )
    return tensors


def normalize_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrappers so every key reads `model.backbone.…`, `model.act_head.…` or `model.action_token`."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith("model."):
            key = "model." + key
        out[key] = value
    has_backbone = any(k.startswith("model.backbone.") for k in out)
    result: dict[str, Tensor] = {}
    for key, value in out.items():
        if key.startswith(PEFT_DUPLICATE):
            if has_backbone:
                continue  # the PEFT wrapper's view of the same modules
            key = "model.backbone." + key[len(PEFT_DUPLICATE):]
        elif key.startswith(PEFT_BACKBONE):
            key = "model.backbone." + key[len(PEFT_BACKBONE):]
        result[key] = value
    return result


def merge_lora(state: dict[str, Tensor], config: TrainingConfig, base: Mapping[str, Tensor], source: Path) -> int:
    """`W = W_base + (alpha / r) · B @ A` for every LoRA-wrapped linear layer; returns how many were merged."""
    a_keys = sorted(k for k in state if ".lora_A." in k)
    b_keys = {k for k in state if ".lora_B." in k}
    if not a_keys and not b_keys:
        return 0
    if config.lora_r is None or config.lora_alpha is None:
        raise MobileVLAError(
            f"checkpoint {source} holds LoRA tensors ({len(a_keys)} lora_A) but the training config has no "
            f"train_setup.lora_enable/lora_r/lora_alpha; pass the config the checkpoint was trained with"
        )
    scale = config.lora_alpha / config.lora_r
    for a_key in a_keys:
        module = a_key.split(".lora_A.")[0]
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        if b_key not in state:
            raise MobileVLAError(f"checkpoint {source}: {a_key} has no matching {b_key}")
        b_keys.discard(b_key)
        lora_a, lora_b = state.pop(a_key), state.pop(b_key)
        rank = lora_a.shape[0]
        if lora_b.shape[1] != rank or rank != config.lora_r:
            raise MobileVLAError(
                f"checkpoint {source}: inconsistent LoRA rank at {module}: lora_A {list(lora_a.shape)}, lora_B "
                f"{list(lora_b.shape)}, train_setup.lora_r = {config.lora_r}; the config does not match the checkpoint"
            )
        base_key = f"{module}.base_layer.weight"
        weight = state.pop(base_key, None)
        if weight is None:
            weight = base.get(f"{module}.weight")
        if weight is None:
            raise MobileVLAError(
                f"checkpoint {source}: LoRA tensors for {module} have no base weight ({base_key} is absent). Pass "
                f"--kosmos-dir with the local Kosmos-2 directory the run started from"
            )
        if tuple(weight.shape) != (lora_b.shape[0], lora_a.shape[1]):
            raise MobileVLAError(
                f"checkpoint {source}: LoRA at {module} is {list(lora_b.shape)}@{list(lora_a.shape)} but its base "
                f"weight is {list(weight.shape)}"
            )
        state[f"{module}.weight"] = weight.float() + scale * (lora_b.float() @ lora_a.float())
        bias = state.pop(f"{module}.base_layer.bias", None)
        if bias is not None:
            state[f"{module}.bias"] = bias
    if b_keys:
        raise MobileVLAError(f"checkpoint {source}: {sorted(b_keys)[0]} has no matching lora_A")
    leftovers = [k for k in state if ".base_layer." in k]
    for key in leftovers:  # a wrapped layer whose adapter was not saved: the base is the weight
        state[key.replace(".base_layer.", ".")] = state.pop(key)
    return len(a_keys)


def detect_head(state: Mapping[str, Tensor], config: TrainingConfig, source: Path) -> HeadConfig:
    """Head variant, LSTM size and layer count from the keys and shapes, cross-checked with the config."""
    if "model.act_head.velocities.mlp.0.weight" in state:
        variant, out_key = "velocities", "model.act_head.velocities.mlp.6.weight"
    elif "model.act_head.actions.mlp.0.weight" in state and "model.act_head.gripper.mlp.0.weight" in state:
        variant, out_key = "actions_gripper", "model.act_head.actions.mlp.6.weight"
    else:
        raise MobileVLAError(
            f"checkpoint {source} has no recognised policy head: expected model.act_head.velocities.mlp.* "
            f"(MobileVLALSTMDecoder) or model.act_head.actions.mlp.* + gripper.mlp.* (LSTMDecoder)"
        )
    hh = state.get("model.act_head.rnn.weight_hh_l0")
    if hh is None:
        raise MobileVLAError(f"checkpoint {source} has no model.act_head.rnn.weight_hh_l0 (the LSTM head)")
    hidden = int(hh.shape[1])
    layers = sum(1 for k in state if k.startswith("model.act_head.rnn.weight_ih_l"))
    if hidden != config.hidden_size:
        raise MobileVLAError(
            f"training config says act_head.hidden_size = {config.hidden_size}, but the checkpoint's LSTM has "
            f"{hidden} (model.act_head.rnn.weight_hh_l0 {list(hh.shape)}): the config does not belong to {source}"
        )
    head = HeadConfig(
        variant=variant, hidden_size=hidden, num_layers=layers, chunk=config.fwd_pred_next_n,
        window=config.window_size, action_dim=config.action_dim,
    )
    out = state.get(out_key)
    if out is not None and int(out.shape[0]) != head.action_outputs:
        per_step = "action_dim" if variant == "velocities" else "(action_dim - 1)"
        raise MobileVLAError(
            f"{out_key} has {int(out.shape[0])} outputs, but the training config gives fwd_pred_next_n × {per_step} "
            f"= {head.action_outputs} (fwd_pred_next_n={config.fwd_pred_next_n}, action_dim={config.action_dim}); "
            f"the config does not belong to {source}"
        )
    return head


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW])
    return f"{len(keys)} (first: {shown}{', …' if len(keys) > SHOW else ''})"


def load_kosmos_dir(path: Path) -> tuple[Any, dict[str, Tensor]]:
    """Config and weights of a local Kosmos-2 directory (Hugging Face layout); never touches the hub."""
    from transformers import Kosmos2ForConditionalGeneration

    if not (path / "config.json").is_file():
        raise MobileVLAError(
            f"Kosmos-2 directory {path} has no config.json; expected a local copy of microsoft/kosmos-2-patch14-224 "
            f"(Hugging Face layout: config.json, model.safetensors, tokenizer.json)"
        )
    model = Kosmos2ForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
    state = {"model.backbone." + k: v for k, v in model.state_dict().items()}
    return with_eager_attention(model.config), state


def import_checkpoint(
    checkpoint: Path, config_path: Path, kosmos_dir: Path | None = None, preset: str = "kosmos-2"
) -> ImportedPolicy:
    """RoboVLMs checkpoint + training config (+ local Kosmos-2 dir) -> reference policy with merged weights."""
    config = read_training_config(config_path)
    state = normalize_keys(load_state_dict(checkpoint))
    kosmos, base = (load_kosmos_dir(kosmos_dir) if kosmos_dir else (kosmos_config(preset), {}))
    merged = merge_lora(state, config, base, checkpoint)
    head = detect_head(state, config, checkpoint)
    policy = ReferencePolicy(kosmos, head)
    expected = {"model." + k: v for k, v in policy.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}
    filled = 0
    for key in expected:
        if key not in state and key in base:
            state[key] = base[key]
            filled += 1
    wrong = [
        f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise MobileVLAError(
            f"checkpoint {checkpoint} has mis-shaped tensors: {_listing(wrong)}. The backbone preset or Kosmos-2 "
            f"directory does not match the checkpoint"
        )
    missing = sorted(k for k in expected if k not in state)
    if missing:
        hint = "" if kosmos_dir else (
            " If the checkpoint holds only the trained weights (frozen base left out), pass --kosmos-dir with the "
            "local Kosmos-2 directory."
        )
        raise MobileVLAError(f"checkpoint {checkpoint} is missing keys the policy needs: {_listing(missing)}.{hint}")
    unexpected = sorted(k for k in state if k not in expected and not k.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise MobileVLAError(
            f"checkpoint {checkpoint} has keys this policy does not have: {_listing(unexpected)}. Is it a RoboVLMs "
            f"Kosmos-2 policy with an LSTM head, and does --preset/--kosmos-dir match its backbone?"
        )
    policy.load_state_dict({k[len("model."):]: v.float() for k, v in state.items() if k in expected}, strict=False)
    log.info("imported %s: head %s (LSTM %d×%d), %d LoRA layers merged, %d tensors from the Kosmos-2 directory",
             checkpoint, head.variant, head.num_layers, head.hidden_size, merged, filled)
    return ImportedPolicy(policy.eval(), config, checkpoint, merged, filled)


def write_training_config(path: Path, head: HeadConfig, lora_r: int, lora_alpha: float,
                          action: ActionSettings) -> None:
    """A RoboVLMs-style training config JSON matching a written checkpoint."""
    config = {
        "model": "kosmos",
        "window_size": head.window,
        "fwd_pred_next_n": head.chunk,
        "act_head": {
            "type": "MobileVLALSTMDecoder" if head.variant == "velocities" else "LSTMDecoder",
            "hidden_size": head.hidden_size,
            "action_dim": head.action_dim,
            "down_sample": "none",
            "latent": 1,
            "window_size": 1,
            "fwd_pred_next_n": 1,
        },
        "train_setup": {"lora_enable": True, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": 0.05},
        "norm_action": action.norm_action,
        "norm_min": list(action.norm_min) if len(action.norm_min) > 1 else action.norm_min[0],
        "norm_max": list(action.norm_max) if len(action.norm_max) > 1 else action.norm_max[0],
        "image_size": 224,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


def is_lora_target(name: str, module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS


def lora_factors(policy: ReferencePolicy, lora_r: int, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Deterministic random LoRA factors `(A [r, in], B [out, r])` for every target layer of the backbone."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in policy.backbone.named_modules():
        if is_lora_target(name, module):
            assert isinstance(module, torch.nn.Linear)
            lora_a = torch.randn(lora_r, module.in_features, generator=generator) * 0.02
            lora_b = torch.randn(module.out_features, lora_r, generator=generator) * 0.02
            factors[name] = (lora_a, lora_b)
    return factors


def lora_base_state(policy: ReferencePolicy, factors: Mapping[str, tuple[Tensor, Tensor]],
                    scale: float) -> dict[str, Tensor]:
    """The backbone's state with every LoRA target's weight replaced by its base `W - scale·B@A`."""
    state = {}
    for key, value in policy.backbone.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in factors and leaf == "weight":
            lora_a, lora_b = factors[module]
            value = value - scale * (lora_b @ lora_a)
        state[key] = value.detach().clone()
    return state


def write_robovlms_checkpoint(
    policy: ReferencePolicy, path: Path, lora_r: int = 4, lora_alpha: float = 8.0, include_frozen: bool = True,
    seed: int = 0,
) -> None:
    """Save `policy` as RoboVLMs would: Lightning layout, PEFT-wrapped backbone with un-merged LoRA tensors.

    Each LoRA target `W` is split into `base = W - (alpha/r)·B@A` plus random `A`, `B`, so importing (which merges)
    must give back exactly `policy`. With `include_frozen=False` the backbone's frozen tensors are left out (only
    LoRA, head and action token are saved): they must come from the Kosmos-2 directory `write_kosmos_dir` writes.
    """
    factors = lora_factors(policy, lora_r, seed)
    state: dict[str, Tensor] = {}
    for module, (lora_a, lora_b) in factors.items():
        state[f"{PEFT_BACKBONE}{module}.lora_A.default.weight"] = lora_a
        state[f"{PEFT_BACKBONE}{module}.lora_B.default.weight"] = lora_b
    if include_frozen:
        for key, value in lora_base_state(policy, factors, lora_alpha / lora_r).items():
            if key.endswith(IGNORED_SUFFIXES):
                continue
            module, _, leaf = key.rpartition(".")
            wrapped = f"{module}.base_layer.{leaf}" if module in factors else key
            state[PEFT_BACKBONE + wrapped] = value
    for key, value in policy.act_head.state_dict().items():
        state[f"model.act_head.{key}"] = value.detach().clone()
    state["model.action_token"] = policy.action_token.detach().clone()
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.2.0"}, path)


def write_kosmos_dir(policy: ReferencePolicy, path: Path, lora_r: int = 4, lora_alpha: float = 8.0,
                     seed: int = 0) -> None:
    """The local 'Kosmos-2 directory' (HF layout) that a frozen-base checkpoint written with the same LoRA
    settings and seed was trained from."""
    factors = lora_factors(policy, lora_r, seed)
    backbone = type(policy.backbone)(policy.backbone.config)
    backbone.load_state_dict(lora_base_state(policy, factors, lora_alpha / lora_r))
    backbone.save_pretrained(str(path))
