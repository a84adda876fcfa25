"""`clip-lstm` / `clip-mlp` ("Simple CLIP", docs/design.md §2.8): transformers' `CLIPModel` (ViT-B/32 at real size)
gives an image feature per frame and a text feature per instruction (each projected and L2-normalized, as
`CLIPModel`'s own forward normalizes them); the head reads [image feature, text feature] per frame: an LSTM over the
last `window` frames (RoboVLMs' history rule, docs/design.md §2.3) or an MLP on the current frame, then RoboVLMs'
MLPTanhHead -> chunk x 2-D velocities. Parts: vision (frame), language (once per instruction, pooled at the </s>
token), head (window or frame).

Checkpoint keys (prefixes `module.` / `_forward_module.` / `model.` stripped): `clip.*` (Hugging Face CLIPModel names;
absent ones come from --backbone-dir, a local CLIP directory), `rnn.*` (clip-lstm), `velocities.mlp.*`.
Presets: tiny (tiny widths), mid and kosmos-2 (both the real ViT-B/32 shapes: CLIPConfig's defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel

from build_engines.adapters.base import ExportPart, PolicyAdapter, Reference
from build_engines.adapters.weights import read_state, write_state
from build_engines.checkpoint import ImportedPolicy, load_checked
from build_engines.export import FramePixels, text_layers
from build_engines.presets import TINY_VOCAB, HeadConfig, with_eager_attention
from build_engines.reference import ActionMLPs
from build_engines.training_config import TrainingConfig, default_training_config, read_training_config
from build_engines.training_config import write_training_config as write_robovlms_config
from runtime.bundle import ActionSettings, PolicySettings
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing, normalize_frame
from runtime.prompt import PromptSettings
from runtime.specs import ONNX_OPSET, PartSpec, TensorSpec, action_outputs

NORMALIZED = ActionSettings(norm_action=True, norm_min=(-1.15,), norm_max=(1.15,))
CLIP_MAX_TOKENS = 77  # CLIP's text position table
TEXT_SOURCE = ("text_feature", "language.text_feature")  # the head reads the cached instruction feature


def clip_config(preset: str) -> CLIPConfig:
    if preset == "tiny":
        config = CLIPConfig(
            text_config=dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=CLIP_MAX_TOKENS),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=224, patch_size=32),
            projection_dim=32)
    else:  # mid, kosmos-2: ViT-B/32 as openai/clip-vit-base-patch32 (CLIPConfig's defaults)
        config = CLIPConfig()
    result: CLIPConfig = with_eager_attention(config)
    return result


class ClipPolicy(nn.Module):
    def __init__(self, config: CLIPConfig, head: HeadConfig) -> None:
        super().__init__()
        self.clip = CLIPModel(config)
        self.head_config = head
        self.feature_dim = int(config.projection_dim or 0)
        joint = 2 * self.feature_dim
        if head.kind == "lstm":
            self.rnn = nn.LSTM(joint, head.hidden_size, num_layers=head.num_layers, batch_first=True)
        self.decoder = ActionMLPs(head.hidden_size if head.kind == "lstm" else joint, head)
        self.eval()

    def image_feature(self, pixels: Tensor) -> Tensor:
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def chunk(self, images: Tensor, text: Tensor) -> Tensor:
        """Image features `(1, k, P)` of the last k frames and the text feature `(1, P)` -> this frame's chunk."""
        joint = torch.cat([images, text.unsqueeze(1).expand(-1, images.shape[1], -1)], dim=-1)
        if self.head_config.kind == "mlp":
            return self.decoder.decode(joint[:, -1])["actions"]
        out, _ = self.rnn(joint)
        return self.decoder.decode(out[:, -1])["actions"]


def as_clip(model: nn.Module) -> ClipPolicy:
    if not isinstance(model, ClipPolicy):
        raise TypeError(f"bug: a CLIP adapter was handed a {type(model).__name__}")
    return model


def l2_normalize(x: Tensor) -> Tensor:
    """Written out (x·x, ReduceSum, Sqrt): F.normalize's ReduceL2 does not survive every exporter/opset path."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True)).clamp_min(1e-12)


class ClipVisionExport(nn.Module):
    def __init__(self, policy: ClipPolicy, pre: Preprocessing) -> None:
        super().__init__()
        self.pixels = FramePixels(pre)
        self.clip = policy.clip

    def forward(self, frame: Tensor) -> Tensor:
        pooled = self.clip.vision_model(pixel_values=self.pixels(frame)).pooler_output
        return l2_normalize(self.clip.visual_projection(pooled))


class ClipTextExport(nn.Module):
    """Right-padded ids (`text` layout) -> the projected, normalized state at </s> (`action_index`)."""

    causal: Tensor

    def __init__(self, policy: ClipPolicy, length: int) -> None:
        super().__init__()
        self.clip = policy.clip
        self.register_buffer("causal", torch.ones(length, length, dtype=torch.bool).tril())

    def forward(self, input_ids: Tensor, attention_mask: Tensor, action_index: Tensor) -> Tensor:
        text = self.clip.text_model
        hidden = text_layers(text.encoder.layers, text.embeddings(input_ids=input_ids), self.causal, attention_mask)
        pooled = text.final_layer_norm(hidden).index_select(1, action_index).reshape(1, -1)
        return l2_normalize(self.clip.text_projection(pooled))


class ClipHeadExport(nn.Module):
    def __init__(self, policy: ClipPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, images: Tensor, text_feature: Tensor, history_len: Tensor | None = None) -> Tensor:
        if history_len is None:  # clip-mlp: this frame's image feature (1, P)
            return self.policy.chunk(images.unsqueeze(1), text_feature)
        joint = torch.cat([images, text_feature.unsqueeze(1).expand(-1, images.shape[1], -1)], dim=-1)
        out, _ = self.policy.rnn(joint)
        last = out.index_select(1, history_len - 1).reshape(1, -1)  # causal: the zero rows after do not matter
        return self.policy.decoder.decode(last)["actions"]


class ClipLSTMAdapter(PolicyAdapter):
    family = "clip-lstm"
    summary = "CLIP ViT-B/32 image + text features, LSTM head over the history window, 2-D velocities"
    prompt_layout = "text"
    prompt_template = "{instruction}"
    # CLIP's own names (HF pads with <|endoftext|>); the generated tokenizer of --random-weights has Kosmos-2's
    special_tokens = ({"bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"},
                      {"bos": "<s>", "eos": "</s>", "pad": "<pad>"})
    kind = "lstm"

    def head(self, preset: str, config: TrainingConfig | None = None) -> HeadConfig:
        if config is not None:
            return HeadConfig(hidden_size=config.hidden_size, chunk=config.fwd_pred_next_n,
                              window=1 if self.kind == "mlp" else config.window_size, action_dim=config.action_dim,
                              kind=self.kind)
        tiny = preset == "tiny"
        return HeadConfig(hidden_size=64 if tiny else 512, window=1 if self.kind == "mlp" else 8, kind=self.kind,
                          num_layers=4)

    def random_policy(self, preset: str, seed: int) -> ImportedPolicy:
        torch.manual_seed(seed)
        policy = ClipPolicy(clip_config(preset), self.head(preset))
        return ImportedPolicy(policy, default_training_config(policy.head_config, NORMALIZED), None, 0, 0)

    def import_checkpoint(self, checkpoint: Path, config: Path, backbone_dir: Path | None,
                          preset: str) -> ImportedPolicy:
        settings = read_training_config(config)
        if settings.action_dim != 2:
            raise MobileVLAError(f"training config {config}: act_head.action_dim is {settings.action_dim}; the CLIP "
                                 f"families emit 2-D velocities")
        clip, base = local_clip(backbone_dir, preset)
        policy = ClipPolicy(clip, self.head(preset, settings))
        filled = load_checked(policy, read_state(checkpoint), base, checkpoint, "",
                              "" if backbone_dir else " Frozen CLIP weights left out? Pass --backbone-dir.",
                              f"Is it a {self.family} policy (docs/adapters.md lists its keys)?")
        return ImportedPolicy(policy.eval(), settings, checkpoint, 0, filled)

    def write_checkpoint(self, imported: ImportedPolicy, checkpoint: Path, config: Path, seed: int) -> None:
        policy = as_clip(imported.policy)
        write_state(policy, checkpoint)
        write_robovlms_config(config, policy.head_config, 0, 1.0, imported.config.action,
                              extra={"policy_family": self.family})

    def vocab_size(self, model: nn.Module) -> int:
        return int(as_clip(model).clip.text_model.embeddings.token_embedding.num_embeddings)

    def policy_settings(self, model: nn.Module) -> PolicySettings:
        policy = as_clip(model)
        head = policy.head_config
        return PolicySettings("velocities", head.chunk, head.window, head.action_dim,
                              head.hidden_size if head.kind == "lstm" else 0, policy.feature_dim,
                              details={"head": head.kind, "backbone": "CLIPModel"})

    def parts(self, model: nn.Module, pre: Preprocessing, prompt: PromptSettings) -> list[ExportPart]:
        policy = as_clip(model)
        length, dim, head = prompt.sequence_length, policy.feature_dim, policy.head_config
        if length > CLIP_MAX_TOKENS:
            raise MobileVLAError(f"--max-prompt-tokens {prompt.max_prompt_tokens} gives {length} text positions; "
                                 f"CLIP has {CLIP_MAX_TOKENS}: use --max-prompt-tokens {CLIP_MAX_TOKENS - 2} or less")
        feature = TensorSpec("image_feature", "float32", (1, dim))
        text_feature = TensorSpec("text_feature", "float32", (1, dim))
        vision = PartSpec("vision", (TensorSpec("frame", "uint8", (1, pre.image_size, pre.image_size, pre.channels)),),
                          (feature,), ONNX_OPSET, 1e-3, "frame", (("frame", "frame"),))
        text_inputs = tuple(TensorSpec(n, "int64", (1, length)) for n in ("input_ids", "attention_mask"))
        text = PartSpec("language", (*text_inputs, TensorSpec("action_index", "int64", (1,))), (text_feature,),
                        ONNX_OPSET, 1e-3, "instruction",
                        tuple((n, f"text.{n}") for n in ("input_ids", "attention_mask", "action_index")))
        outputs = action_outputs("velocities", head.chunk, head.action_dim)
        if head.kind == "lstm":
            head_spec = PartSpec("head", (TensorSpec("features", "float32", (1, head.window, dim)), text_feature,
                                          TensorSpec("history_len", "int64", (1,))), outputs, ONNX_OPSET, 1e-4,
                                 "window", (("features", "window(vision.image_feature)"), TEXT_SOURCE,
                                            ("history_len", "history_len")))
        else:
            head_spec = PartSpec("head", (feature, text_feature), outputs, ONNX_OPSET, 1e-4, "frame",
                                 (("image_feature", "vision.image_feature"), TEXT_SOURCE))
        return [ExportPart(ClipVisionExport(policy, pre), vision), ExportPart(ClipTextExport(policy, length), text),
                ExportPart(ClipHeadExport(policy), head_spec)]

    def reference(self, model: nn.Module, frames: Sequence[np.ndarray], prompt_ids: Sequence[int],
                  prompt: PromptSettings, pre: Preprocessing) -> Reference:
        policy = as_clip(model)
        ids = torch.tensor([[prompt.bos_id, *prompt_ids, prompt.eos_id]], dtype=torch.long)
        last = policy.clip.text_model(input_ids=ids).last_hidden_state[:, -1]  # </s> ends the unpadded sequence
        text_feature = F.normalize(policy.clip.text_projection(last), dim=-1)
        images: list[Tensor] = []
        steps = []
        for frame in frames:
            images.append(policy.image_feature(torch.from_numpy(normalize_frame(frame, pre))))
            recent = torch.stack(images[-policy.head_config.window:], dim=1)
            steps.append({"vision.image_feature": images[-1], "language.text_feature": text_feature,
                          "head.actions": policy.chunk(recent, text_feature)})
        return steps


class ClipMLPAdapter(ClipLSTMAdapter):
    family = "clip-mlp"
    summary = "CLIP ViT-B/32 image + text features, MLP head on the current frame, 2-D velocities"
    kind = "mlp"


def local_clip(directory: Path | None, preset: str) -> tuple[Any, dict[str, Tensor]]:
    """A CLIP config and (from a local Hugging Face directory) its weights keyed `clip.*`; nothing is downloaded."""
    if directory is None:
        return clip_config(preset), {}
    if not (directory / "config.json").is_file():
        raise MobileVLAError(f"CLIP directory {directory} has no config.json; expected a local copy of "
                             f"openai/clip-vit-base-patch32 (Hugging Face layout: config.json, model.safetensors, "
                             f"tokenizer.json)")
    model = CLIPModel.from_pretrained(str(directory), local_files_only=True)
    return with_eager_attention(model.config), {f"clip.{k}": v for k, v in model.state_dict().items()}
