"""The RoboVLMs Kosmos-2 families (docs/design.md §2, §2.6): action token + LSTM head (`robovlms-lstm`, the default),
+ MLP head (`robovlms-mlp`, RoboVLMs' FCDecoder: no history), and both heads on the same features with fixed
weights (`ensemble`). Parts: vision (frame) -> trunk (frame) -> head (window for LSTM and ensemble, frame for MLP).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from build_engines.adapters.base import ExportPart, PolicyAdapter, Reference
from build_engines.checkpoint import ImportedPolicy, import_checkpoint
from build_engines.demo.checkpoint_writer import write_robovlms_checkpoint
from build_engines.export import export_modules
from build_engines.presets import HeadConfig, kosmos_config, tiny_head
from build_engines.reference import ReferencePolicy, run_reference_episode
from build_engines.training_config import default_training_config, write_training_config
from runtime.bundle import ActionSettings, PolicySettings
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.prompt import PromptSettings
from runtime.specs import ONNX_OPSET, PartDims, PartSpec, TensorSpec, part_specs

log = logging.getLogger("build_engines.adapters")

RANDOM_NORMALIZATION = ActionSettings(norm_action=True, norm_min=(-1.15,), norm_max=(1.15,))


def as_reference(model: nn.Module) -> ReferencePolicy:
    if not isinstance(model, ReferencePolicy):
        raise TypeError(f"bug: a RoboVLMs adapter was handed a {type(model).__name__}")
    return model


class RoboVLMsAdapter(PolicyAdapter):
    """Kosmos-2 backbone + action token + a RoboVLMs head of `kind`."""

    family = "robovlms-lstm"
    summary = "RoboVLMs Kosmos-2 + action token + LSTM head (LSTMDecoder / MobileVLALSTMDecoder)"
    kind = "lstm"

    def head(self, preset: str) -> HeadConfig:
        """The head of a `--random-weights` build: the tiny preset's, else Mobile VLA's (velocities, 512 wide)."""
        head = tiny_head(kind=self.kind) if preset == "tiny" else replace(
            HeadConfig(kind=self.kind), window=1 if self.kind == "mlp" else 8)
        return replace(head, weights=self.weights())

    def weights(self) -> tuple[float, float]:
        return (0.5, 0.5)

    def random_policy(self, preset: str, seed: int) -> ImportedPolicy:
        torch.manual_seed(seed)
        policy = ReferencePolicy(kosmos_config(preset), self.head(preset))
        return ImportedPolicy(policy, default_training_config(policy.head_config, RANDOM_NORMALIZATION), None, 0, 0)

    def import_checkpoint(self, checkpoint: Path, config: Path, backbone_dir: Path | None,
                          preset: str) -> ImportedPolicy:
        return import_checkpoint(checkpoint, config, backbone_dir, preset, self.kind, self.weights())

    def write_checkpoint(self, imported: ImportedPolicy, checkpoint: Path, config: Path, seed: int) -> None:
        policy = as_reference(imported.policy)
        write_robovlms_checkpoint(policy, checkpoint, seed=seed)
        write_training_config(config, policy.head_config, lora_r=4, lora_alpha=8.0, action=imported.config.action,
                              extra={"policy_family": self.family})

    def vocab_size(self, model: nn.Module) -> int:
        return int(as_reference(model).backbone.text_model.model.embed_tokens.num_embeddings)

    def policy_settings(self, model: nn.Module) -> PolicySettings:
        policy = as_reference(model)
        head = policy.head_config
        details: dict[str, object] = {"head": head.kind}
        if head.kind == "ensemble":
            details.update(weights=list(head.weights), mlp_hidden=head.mlp_hidden or head.hidden_size)
        return PolicySettings(head.variant, head.chunk, head.window, head.action_dim,
                              0 if head.kind == "mlp" else head.hidden_size, policy.text_dim, details=details)

    def parts(self, model: nn.Module, pre: Preprocessing, prompt: PromptSettings) -> list[ExportPart]:
        policy = as_reference(model)
        head = policy.head_config
        dims = PartDims(pre.image_size, pre.channels, prompt.num_image_tokens, policy.text_dim,
                        prompt.sequence_length, head.window, head.chunk, head.action_dim, head.variant)
        specs = part_specs(dims)
        if head.kind == "mlp":
            specs["head"] = mlp_head_spec(specs["head"], policy.text_dim)
        modules = export_modules(policy, pre, prompt)
        return [ExportPart(modules[name], spec) for name, spec in specs.items()]

    def reference(self, model: nn.Module, frames: Sequence[np.ndarray], prompt_ids: Sequence[int],
                  prompt: PromptSettings, pre: Preprocessing) -> Reference:
        steps = run_reference_episode(as_reference(model), frames, prompt_ids, prompt, pre)
        return [{"vision.image_embeds": s.image_embeds, "trunk.action_feature": s.feature,
                 **{f"head.{name}": value for name, value in s.outputs.items()}} for s in steps]


def mlp_head_spec(lstm: PartSpec, text_dim: int) -> PartSpec:
    """The MLP head: this frame's action feature in, the same outputs, every frame."""
    return PartSpec("head", inputs=(TensorSpec("action_feature", "float32", (1, text_dim)),), outputs=lstm.outputs,
                    opset=ONNX_OPSET, tolerance=lstm.tolerance, cadence="frame",
                    sources=(("action_feature", "trunk.action_feature"),))


class RoboVLMsMLPAdapter(RoboVLMsAdapter):
    family = "robovlms-mlp"
    summary = "RoboVLMs Kosmos-2 + action token + MLP head (FCDecoder): the current frame's feature only"
    kind = "mlp"


class EnsembleAdapter(RoboVLMsAdapter):
    family = "ensemble"
    summary = "RoboVLMs Kosmos-2 + action token, LSTM and MLP heads on the same features, chunks combined by weights"
    kind = "ensemble"
    OPTIONS: ClassVar[Mapping[str, str]] = {"weights": "LSTM,MLP weights of the combined chunk, e.g. 0.5,0.5 (default)"}

    def weights(self) -> tuple[float, float]:
        text = self.option("weights", "0.5,0.5")
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 2 or not all(np.isfinite(values)) or min(values) < 0 or sum(values) <= 0:
            raise MobileVLAError(f"--policy-option weights={text} must be two non-negative numbers with a positive "
                                 f"sum, LSTM,MLP (e.g. weights=0.7,0.3)")
        return values[0], values[1]
