"""RoboVLMs-style checkpoints for the demo and the tests (docs/design.md §2.4): what checkpoint.py imports.

The writer mirrors a real run: Lightning layout, PEFT-wrapped backbone with un-merged LoRA factors, optionally
without the frozen base weights (they then come from a local Kosmos-2 directory, also written here).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from build_engines.checkpoint import IGNORED_SUFFIXES, LORA_TARGETS, PEFT_BACKBONE
from build_engines.reference import ReferencePolicy


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
    heads = [("act_head", policy.act_head)] + ([("mlp_head", policy.mlp_head)] if hasattr(policy, "mlp_head") else [])
    for prefix, head in heads:
        for key, value in head.state_dict().items():
            state[f"model.{prefix}.{key}"] = value.detach().clone()
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
