"""RoboVLMs checkpoint import (docs/design.md §2.4). The training config is read in training_config.py; the
RoboVLMs-style checkpoints of the demo and the tests are written by demo/checkpoint_writer.py.

Import: file format sniffed, then `torch.load(weights_only=True)` (a checkpoint is untrusted input) -> state dict ->
every tensor finite -> key normalization (`module.`, `_forward_module.`, `model.` prefix, PEFT wrappers) -> LoRA
merge -> head variant and sizes detected from the keys and shapes -> cross-check against the training config ->
`ReferencePolicy`.
"""

from __future__ import annotations

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
from build_engines.training_config import TrainingConfig, read_training_config
from runtime.errors import MobileVLAError

log = logging.getLogger("build_engines.checkpoint")

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "dense")
STRIP_PREFIXES = ("module.", "_forward_module.")
PEFT_BACKBONE = "model.backbone.base_model.model."
PEFT_DUPLICATE = "model.model.base_model.model."
IGNORED_SUFFIXES = ("lm_head.weight", "position_ids", "embed_positions.weights")
SHOW = 5  # how many offending keys an error message lists


@dataclass
class ImportedPolicy:
    policy: Any  # the family's reference model (ReferencePolicy for the RoboVLMs families)
    config: TrainingConfig
    checkpoint: Path | None
    lora_merged: int
    filled_from_kosmos: int


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type when it has no message (EOFError on an empty file has none)."""
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def sniff_format(path: Path) -> None:
    """Refuse files that are not PyTorch checkpoints before torch.load can misreport them (a JSON file fails the
    weights-only unpickler and would read as "pickled code"). torch.save writes a zip archive; the legacy format
    is a pickle (protocol 2+ starts with 0x80)."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        raise MobileVLAError(
            f"checkpoint {path} is empty (0 bytes): the copy or the training run's save was cut short. Copy the "
            f"checkpoint again"
        )
    if head.startswith(b"PK\x03\x04") or head[0] == 0x80:
        return
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        kind = "a JSON file (the training config? it goes to --config)"
    elif len(head) > 9 and head[8:10] == b'{"':
        kind = "a safetensors file (re-save it with torch.save({'state_dict': state_dict}, path))"
    else:
        kind = f"an unknown format (it starts with {head[:8]!r})"
    raise MobileVLAError(
        f"checkpoint {path} is not a PyTorch checkpoint: it is {kind}. Pass the .ckpt/.pt file torch.save wrote"
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
    sniff_format(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise MobileVLAError(
                f"checkpoint {path} contains pickled code or objects other than tensors and plain containers, which "
                f"this tool refuses to execute (weights_only). Re-save only the weights, e.g. "
                f"torch.save({{'state_dict': model.state_dict()}}, path)"
            ) from exc
        raise MobileVLAError(f"checkpoint {path} is not a PyTorch checkpoint ({first_line(exc)})") from exc
    except Exception as exc:  # torch.load raises many types (RuntimeError, EOFError, zip errors) on broken files
        raise MobileVLAError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({first_line(exc)}); is it truncated or another "
            f"format? Copy it again or re-save it with torch.save"
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
    check_finite(tensors, f"checkpoint {path}")
    return tensors


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """`name (k NaN, j inf of n)` for every floating tensor holding a NaN or an infinity."""
    found = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        nans = int(torch.isnan(tensor).sum())
        found.append(f"{name} ({nans} NaN, {int(torch.isinf(tensor).sum())} inf of {tensor.numel()})")
    return found


def check_finite(tensors: Mapping[str, Tensor], source: str) -> None:
    """Refuse NaN/inf weights: every output of the policy would be NaN, and NaN passes comparisons silently."""
    bad = non_finite(tensors)
    if bad:
        raise MobileVLAError(
            f"{source} has tensors with NaN or infinite values: {_listing(bad)}. The training run diverged or the "
            f"file is damaged; use an earlier checkpoint of the run"
        )


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


def head_variant(state: Mapping[str, Tensor], prefix: str, source: Path) -> tuple[str, str]:
    """(variant, the key of the actions MLP's last layer) of the head under `prefix`."""
    if f"{prefix}velocities.mlp.0.weight" in state:
        return "velocities", f"{prefix}velocities.mlp.6.weight"
    if f"{prefix}actions.mlp.0.weight" in state and f"{prefix}gripper.mlp.0.weight" in state:
        return "actions_gripper", f"{prefix}actions.mlp.6.weight"
    raise MobileVLAError(
        f"checkpoint {source} has no recognised policy head: expected {prefix}velocities.mlp.* "
        f"(MobileVLALSTMDecoder) or {prefix}actions.mlp.* + gripper.mlp.* (LSTMDecoder / FCDecoder)"
    )


def fc_hidden(state: Mapping[str, Tensor], prefix: str, source: Path) -> int:
    """The FCDecoder's width: its `mlp` is Linear(D, D/2), ReLU, Linear(D/2, hidden)."""
    weight = state.get(f"{prefix}mlp.2.weight")
    if weight is None:
        raise MobileVLAError(f"checkpoint {source} has no {prefix}mlp.2.weight (the FCDecoder's input MLP): is it "
                             f"a policy with an MLP head? (--policy robovlms-mlp / ensemble)")
    return int(weight.shape[0])


def detect_head(state: Mapping[str, Tensor], config: TrainingConfig, source: Path, kind: str = "lstm",
                weights: tuple[float, float] = (0.5, 0.5)) -> HeadConfig:
    """Head variant, sizes and layer count from the keys and shapes, cross-checked with the config. `kind`: lstm
    (act_head = LSTMDecoder), mlp (act_head = FCDecoder, no history), ensemble (act_head LSTM + mlp_head FC)."""
    variant, out_key = head_variant(state, "model.act_head.", source)
    layers = 0
    if kind == "mlp":
        hidden = fc_hidden(state, "model.act_head.", source)
        where = f"the FCDecoder is {hidden} wide (model.act_head.mlp.2.weight)"
    else:
        hh = state.get("model.act_head.rnn.weight_hh_l0")
        if hh is None:
            raise MobileVLAError(f"checkpoint {source} has no model.act_head.rnn.weight_hh_l0 (the LSTM head); for "
                                 f"an MLP (FCDecoder) head use --policy robovlms-mlp")
        hidden = int(hh.shape[1])
        layers = sum(1 for k in state if k.startswith("model.act_head.rnn.weight_ih_l"))
        where = f"the checkpoint's LSTM has {hidden} (model.act_head.rnn.weight_hh_l0 {list(hh.shape)})"
    if hidden != config.hidden_size:
        raise MobileVLAError(
            f"training config says act_head.hidden_size = {config.hidden_size}, but {where}: the config does not "
            f"belong to {source}"
        )
    mlp_hidden = 0
    if kind == "ensemble":
        if head_variant(state, "model.mlp_head.", source)[0] != variant:
            raise MobileVLAError(f"checkpoint {source}: the ensemble's two heads output different actions")
        mlp_hidden = fc_hidden(state, "model.mlp_head.", source)
    head = HeadConfig(
        variant=variant, hidden_size=hidden, num_layers=layers or 4, chunk=config.fwd_pred_next_n,
        window=1 if kind == "mlp" else config.window_size, action_dim=config.action_dim, kind=kind,
        mlp_hidden=mlp_hidden, weights=weights,
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


def load_checked(model: torch.nn.Module, state: dict[str, Tensor], base: Mapping[str, Tensor], source: Path,
                 prefix: str, missing_hint: str, unexpected_hint: str, after: str = "") -> int:
    """Load `state` (keys `prefix` + the model's) into `model`, with the importer's diagnostics: tensors absent
    from `state` come from `base` (a local backbone directory); mis-shaped, missing, unexpected or non-finite
    tensors are refused, naming them. Returns how many tensors came from `base`."""
    expected = {prefix + k: v for k, v in model.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}
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
            f"checkpoint {source} has mis-shaped tensors: {_listing(wrong)}. The backbone preset or directory does "
            f"not match the checkpoint"
        )
    missing = sorted(k for k in expected if k not in state)
    if missing:
        raise MobileVLAError(
            f"checkpoint {source} is missing keys the policy needs: {_listing(missing)}.{missing_hint}")
    unexpected = sorted(k for k in state if k not in expected and not k.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise MobileVLAError(
            f"checkpoint {source} has keys this policy does not have: {_listing(unexpected)}. {unexpected_hint}"
        )
    check_finite({k: v for k, v in state.items() if k in expected}, f"checkpoint {source}{after}")
    model.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k in expected}, strict=False)
    return filled


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
    checkpoint: Path, config_path: Path, kosmos_dir: Path | None = None, preset: str = "kosmos-2",
    kind: str = "lstm", weights: tuple[float, float] = (0.5, 0.5),
) -> ImportedPolicy:
    """RoboVLMs checkpoint + training config (+ local Kosmos-2 dir) -> reference policy with merged weights."""
    config = read_training_config(config_path)
    state = normalize_keys(load_state_dict(checkpoint))
    kosmos, base = (load_kosmos_dir(kosmos_dir) if kosmos_dir else (kosmos_config(preset), {}))
    merged = merge_lora(state, config, base, checkpoint)
    head = detect_head(state, config, checkpoint, kind, weights)
    policy = ReferencePolicy(kosmos, head)
    hint = "" if kosmos_dir else (
        " If the checkpoint holds only the trained weights (frozen base left out), pass --kosmos-dir with the local "
        "Kosmos-2 directory.")
    filled = load_checked(policy, state, base, checkpoint, "model.", hint,
                          f"Is it a RoboVLMs Kosmos-2 policy with a {kind} head (--policy), and does "
                          f"--preset/--kosmos-dir match its backbone?",
                          f" after the LoRA merge{f' and {kosmos_dir}' if kosmos_dir else ''}")
    log.info("imported %s: %s head %s (%d wide), %d LoRA layers merged, %d tensors from the Kosmos-2 directory",
             checkpoint, head.kind, head.variant, head.hidden_size, merged, filled)
    return ImportedPolicy(policy.eval(), config, checkpoint, merged, filled)
