"""`feature-fusion`: the team registry's Cases 1-3 (docs/design.md §2.7, docs/adapters.md's worked example).

Kosmos-2's vision model's `pooler_output` (the post-layernormed CLS state, 1024 at real size) and its text model's
last hidden state averaged over the instruction's tokens (2048; the text alone, no image), each projected to 256,
concatenated, then a 4-layer MLP 512 -> 512 -> 256 -> 128 -> chunk x action_dim with ReLU between (dropout only in
training, so none here) and a linear output. Parts:
- vision (frame): frame -> vision_feature (1, Dv)
- language (instruction cadence): the instruction's ids and mask -> text_feature (1, Dt), once per instruction
- head (frame): vision_feature + the cached text_feature -> actions (1, chunk, action_dim)
so a frame costs the vision tower and the MLP only.

Checkpoint keys (after `module.` / `_forward_module.` / `model.` prefixes are stripped): `backbone.vision_model.*`,
`backbone.text_model.*` (Hugging Face Kosmos-2 names; absent ones come from --kosmos-dir), `vision_proj.*`,
`text_proj.*`, `mlp.{0,2,4,6}.*`. Training config: the RoboVLMs keys (`fwd_pred_next_n`, `act_head.action_dim`,
`act_head.hidden_size` = the projection width, normalization, image mean/std); `window_size` is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import Kosmos2ForConditionalGeneration

from build_engines.adapters.base import ExportPart, PolicyAdapter, Reference
from build_engines.adapters.weights import backbone_state, read_state, write_state
from build_engines.checkpoint import ImportedPolicy, load_checked
from build_engines.export import FramePixels, text_layers
from build_engines.presets import HeadConfig, kosmos_config
from build_engines.training_config import TrainingConfig, default_training_config, read_training_config
from build_engines.training_config import write_training_config as write_robovlms_config
from runtime.bundle import ActionSettings, PolicySettings
from runtime.preprocess import Preprocessing, normalize_frame
from runtime.prompt import PromptSettings
from runtime.specs import ONNX_OPSET, PartSpec, TensorSpec, action_outputs

FUSION_WIDTHS = (512, 256, 128)  # the MLP after the 2 x 256 concatenation: 512 -> 512 -> 256 -> 128 -> out
PROJECTION = 256
RAW_VELOCITIES = ActionSettings(norm_action=False)


class FeatureFusionPolicy(nn.Module):
    def __init__(self, kosmos: Any, chunk: int = 1, action_dim: int = 2, projection: int = PROJECTION) -> None:
        super().__init__()
        self.backbone = Kosmos2ForConditionalGeneration(kosmos)
        vision_dim = int(kosmos.vision_config.hidden_size)
        self.text_dim = int(kosmos.text_config.embed_dim)
        self.chunk, self.action_dim, self.projection = chunk, action_dim, projection
        self.vision_proj = nn.Linear(vision_dim, projection)
        self.text_proj = nn.Linear(self.text_dim, projection)
        a, b, c = FUSION_WIDTHS
        self.mlp = nn.Sequential(nn.Linear(2 * projection, a), nn.ReLU(), nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c),
                                 nn.ReLU(), nn.Linear(c, chunk * action_dim))
        self.eval()

    def fuse(self, vision_feature: Tensor, text_feature: Tensor) -> Tensor:
        joint = torch.cat([self.vision_proj(vision_feature), self.text_proj(text_feature)], dim=-1)
        out: Tensor = self.mlp(joint).reshape(1, self.chunk, self.action_dim)
        return out


def as_fusion(model: nn.Module) -> FeatureFusionPolicy:
    if not isinstance(model, FeatureFusionPolicy):
        raise TypeError(f"bug: the feature-fusion adapter was handed a {type(model).__name__}")
    return model


class VisionPoolExport(nn.Module):
    def __init__(self, policy: FeatureFusionPolicy, pre: Preprocessing) -> None:
        super().__init__()
        self.pixels = FramePixels(pre)
        self.vision = policy.backbone.vision_model

    def forward(self, frame: Tensor) -> Tensor:
        out: Tensor = self.vision(pixel_values=self.pixels(frame)).pooler_output
        return out


class TextMeanExport(nn.Module):
    """The instruction's ids (right-padded, `text` layout) -> the mean of the last hidden state over its tokens."""

    positions: Tensor
    causal: Tensor

    def __init__(self, policy: FeatureFusionPolicy, length: int) -> None:
        super().__init__()
        self.text = policy.backbone.text_model.model
        self.scale = float(self.text.embed_scale)
        zeros = torch.zeros(1, length, policy.text_dim)
        self.register_buffer("positions", self.text.embed_positions(inputs_embeds=zeros).detach().clone())
        self.register_buffer("causal", torch.ones(length, length, dtype=torch.bool).tril())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.text.embed_tokens(input_ids) * self.scale + self.positions  # padding after: positions exact
        hidden = self.text.layer_norm(text_layers(self.text.layers, hidden, self.causal, attention_mask))
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


class FusionHeadExport(nn.Module):
    def __init__(self, policy: FeatureFusionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, vision_feature: Tensor, text_feature: Tensor) -> Tensor:
        return self.policy.fuse(vision_feature, text_feature)


class FeatureFusionAdapter(PolicyAdapter):
    family = "feature-fusion"
    summary = "Kosmos-2 vision pooler + instruction text mean, projected and fused by an MLP (registry Cases 1-3)"
    prompt_layout = "text"
    prompt_template = "{instruction}"
    special_tokens = ({"bos": "<s>", "eos": "</s>", "pad": "<pad>"},)  # Kosmos-2's, without the <grounding> template

    def make(self, kosmos: Any, config: TrainingConfig) -> FeatureFusionPolicy:
        return FeatureFusionPolicy(kosmos, config.fwd_pred_next_n, config.action_dim, config.hidden_size)

    def random_policy(self, preset: str, seed: int) -> ImportedPolicy:
        torch.manual_seed(seed)
        policy = FeatureFusionPolicy(kosmos_config(preset))
        return ImportedPolicy(policy, self.training_config(policy), None, 0, 0)

    def head_config(self, policy: FeatureFusionPolicy) -> HeadConfig:
        """The config fields this family reads, in the RoboVLMs config's terms (hidden_size: the projection)."""
        return HeadConfig(hidden_size=policy.projection, chunk=policy.chunk, window=1, action_dim=policy.action_dim)

    def training_config(self, policy: FeatureFusionPolicy) -> TrainingConfig:
        return default_training_config(self.head_config(policy), RAW_VELOCITIES)

    def import_checkpoint(self, checkpoint: Path, config: Path, backbone_dir: Path | None,
                          preset: str) -> ImportedPolicy:
        settings = read_training_config(config)
        kosmos, base = backbone_state(backbone_dir, preset, "backbone.")
        policy = self.make(kosmos, settings)
        filled = load_checked(policy, read_state(checkpoint), base, checkpoint, "",
                              "" if backbone_dir else " Frozen backbone weights left out? Pass --kosmos-dir.",
                              "Is it a feature-fusion policy (docs/adapters.md lists its keys)?")
        return ImportedPolicy(policy.eval(), settings, checkpoint, 0, filled)

    def write_checkpoint(self, imported: ImportedPolicy, checkpoint: Path, config: Path, seed: int) -> None:
        policy = as_fusion(imported.policy)
        write_state(policy, checkpoint)
        write_robovlms_config(config, self.head_config(policy), 0, 1.0, imported.config.action,
                              extra={"policy_family": self.family})

    def vocab_size(self, model: nn.Module) -> int:
        return int(as_fusion(model).backbone.text_model.model.embed_tokens.num_embeddings)

    def policy_settings(self, model: nn.Module) -> PolicySettings:
        policy = as_fusion(model)
        return PolicySettings("velocities", policy.chunk, 1, policy.action_dim, 0, policy.text_dim,
                              details={"projection": policy.projection, "mlp": [2 * policy.projection,
                                                                              *FUSION_WIDTHS]})

    def parts(self, model: nn.Module, pre: Preprocessing, prompt: PromptSettings) -> list[ExportPart]:
        policy = as_fusion(model)
        size, length = pre.image_size, prompt.sequence_length
        vision_dim = policy.vision_proj.in_features
        vision = PartSpec("vision", (TensorSpec("frame", "uint8", (1, size, size, pre.channels)),),
                          (TensorSpec("vision_feature", "float32", (1, vision_dim)),), ONNX_OPSET, 1e-3, "frame",
                          (("frame", "frame"),))
        text = PartSpec("language", (TensorSpec("input_ids", "int64", (1, length)),
                                 TensorSpec("attention_mask", "int64", (1, length))),
                        (TensorSpec("text_feature", "float32", (1, policy.text_dim)),), ONNX_OPSET, 1e-3,
                        "instruction", (("input_ids", "text.input_ids"), ("attention_mask", "text.attention_mask")))
        head = PartSpec("head", (TensorSpec("vision_feature", "float32", (1, vision_dim)),
                                 TensorSpec("text_feature", "float32", (1, policy.text_dim))),
                        action_outputs("velocities", policy.chunk, policy.action_dim), ONNX_OPSET, 1e-4, "frame",
                        (("vision_feature", "vision.vision_feature"), ("text_feature", "language.text_feature")))
        return [ExportPart(VisionPoolExport(policy, pre), vision), ExportPart(TextMeanExport(policy, length), text),
                ExportPart(FusionHeadExport(policy), head)]

    def reference(self, model: nn.Module, frames: Sequence[np.ndarray], prompt_ids: Sequence[int],
                  prompt: PromptSettings, pre: Preprocessing) -> Reference:
        policy = as_fusion(model)
        ids = torch.tensor([[prompt.bos_id, *prompt_ids, prompt.eos_id]], dtype=torch.long)
        hidden = policy.backbone.text_model.model(input_ids=ids, use_cache=False).last_hidden_state
        text_feature = hidden.mean(dim=1)  # every token of the unpadded instruction
        steps = []
        for frame in frames:
            pixels = torch.from_numpy(normalize_frame(frame, pre))
            vision_feature = policy.backbone.vision_model(pixel_values=pixels).pooler_output
            steps.append({"vision.vision_feature": vision_feature, "language.text_feature": text_feature,
                          "head.actions": policy.fuse(vision_feature, text_feature)})
        return steps
