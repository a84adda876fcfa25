"""Checkpoint reading and writing shared by the adapters of families with their own key names (docs/adapters.md).

`read_state` applies the importer's safety (format sniffed, `torch.load(weights_only=True)`, every tensor finite)
and strips the wrappers a training stack adds (`module.`, `_forward_module.`, `model.`); `load_checked`
(checkpoint.py) then gives the importer's diagnostics for missing, unexpected and mis-shaped tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from build_engines.checkpoint import load_kosmos_dir, load_state_dict
from build_engines.presets import kosmos_config

WRAPPERS = ("module.", "_forward_module.", "model.")


def read_state(checkpoint: Path) -> dict[str, Tensor]:
    state = {}
    for key, value in load_state_dict(checkpoint).items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPERS:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        state[key] = value
    return state


def backbone_state(directory: Path | None, preset: str, prefix: str) -> tuple[Any, dict[str, Tensor]]:
    """A Kosmos-2 config and (from a local directory) its weights keyed `prefix` + Hugging Face's names."""
    if directory is None:
        return kosmos_config(preset), {}
    config, state = load_kosmos_dir(directory)  # keyed model.backbone.*
    return config, {prefix + key.removeprefix("model.backbone."): value for key, value in state.items()}


def write_state(model: nn.Module, checkpoint: Path) -> None:
    """`model`'s weights in the Lightning layout (`state_dict`, keys under `model.`), as a training run saves."""
    state = {f"model.{key}": value.detach().clone() for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, checkpoint)
