"""The PyTorch reference policy: docs/design.md §2 written out with transformers' Kosmos-2 modules.

This is the ground truth the exported graphs are checked against. It builds each sequence exactly as training did
(variable length, no padding tricks) and calls the Hugging Face text transformer itself, so the export's static,
padded re-implementation is checked against independent code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

from build_engines.presets import HeadConfig
from runtime.preprocess import Preprocessing, normalize_frame
from runtime.prompt import FALLBACK_TEXT_SLOTS, LAYOUTS, PromptSettings, check_choice

MLP_WIDTHS = (1024, 512, 256)  # RoboVLMs' MLPTanhHead/MLPSigmoidHead hidden widths


class MLPHead(nn.Module):
    """`MLPTanhHead` (tanh=True) or `MLPSigmoidHead` (tanh=False: upstream's sigmoid is commented out -> logits)."""

    def __init__(self, hidden: int, out: int, tanh: bool) -> None:
        super().__init__()
        a, b, c = MLP_WIDTHS
        layers: list[nn.Module] = [
            nn.Linear(hidden, a), nn.ReLU(), nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, out)
        ]
        if tanh:
            layers.append(nn.Tanh())
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.mlp(x)
        return out


class ActionMLPs(nn.Module):
    """The action MLPs on a hidden vector; key names match RoboVLMs (`velocities` | `actions` + `gripper`)."""

    def __init__(self, hidden: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        if config.variant == "velocities":
            self.velocities = MLPHead(hidden, config.action_outputs, tanh=True)
        else:
            self.actions = MLPHead(hidden, config.action_outputs, tanh=True)
            self.gripper = MLPHead(hidden, config.chunk, tanh=False)

    def decode(self, last: Tensor) -> dict[str, Tensor]:
        """Hidden vector of the current step `(1, H)` -> `actions (1, n, d')` (+ `gripper_logits (1, n)`)."""
        n = self.config.chunk
        if self.config.variant == "velocities":
            return {"actions": self.velocities(last).reshape(1, n, -1)}
        return {"actions": self.actions(last).reshape(1, n, -1), "gripper_logits": self.gripper(last)}


class PolicyHead(ActionMLPs):
    """RoboVLMs' LSTMDecoder (docs/design.md §2.3): `rnn` + the action MLPs."""

    def __init__(self, text_dim: int, config: HeadConfig) -> None:
        super().__init__(config.hidden_size, config)
        self.rnn = nn.LSTM(text_dim, config.hidden_size, num_layers=config.num_layers, batch_first=True)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Features of the last k frames `(1, k, D)`, LSTM from zero state, output of the last step."""
        out, _ = self.rnn(features)
        return self.decode(out[:, -1])


class FCHead(ActionMLPs):
    """RoboVLMs' FCDecoder (docs/design.md §2.6): `mlp` (D -> D/2 -> ReLU -> hidden) + the action MLPs, on the
    current frame's action feature only (one token: the max-pool over tokens is the identity)."""

    def __init__(self, text_dim: int, config: HeadConfig, hidden: int) -> None:
        super().__init__(hidden, config)
        self.mlp = nn.Sequential(nn.Linear(text_dim, text_dim // 2), nn.ReLU(), nn.Linear(text_dim // 2, hidden))

    def forward(self, feature: Tensor) -> dict[str, Tensor]:
        """The current frame's feature `(1, D)` -> its chunk."""
        return self.decode(self.mlp(feature))


def combine(weights: tuple[float, float], first: dict[str, Tensor], second: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ensemble's chunk: `w0·first + w1·second` per output (gripper logits alike)."""
    return {name: weights[0] * first[name] + weights[1] * second[name] for name in first}


class ReferencePolicy(nn.Module):
    """Backbone + action token + head, with RoboVLMs' module names (state dict keys minus the `model.` prefix)."""

    def __init__(self, kosmos: Kosmos2Config, head: HeadConfig) -> None:
        super().__init__()
        self.backbone = Kosmos2ForConditionalGeneration(kosmos)
        text_config: Any = kosmos.text_config
        self.text_dim = int(text_config.embed_dim)
        self.action_token = nn.Parameter(torch.zeros(self.text_dim))
        self.head_config = head
        self.act_head: Any = (FCHead(self.text_dim, head, head.hidden_size) if head.kind == "mlp"
                                    else PolicyHead(self.text_dim, head))
        if head.kind == "ensemble":  # the FCDecoder beside the LSTM: `mlp_head.*` keys
            self.mlp_head = FCHead(self.text_dim, head, head.mlp_hidden or head.hidden_size)
        self.eval()

    def head_outputs(self, recent: Tensor) -> dict[str, Tensor]:
        """The chunk from the features of the last k frames `(1, k, D)` (the MLP head reads only the last)."""
        kind = self.head_config.kind
        if kind == "mlp":
            out: dict[str, Tensor] = self.act_head(recent[:, -1])
            return out
        lstm: dict[str, Tensor] = self.act_head(recent)
        if kind == "lstm":
            return lstm
        return combine(self.head_config.weights, lstm, self.mlp_head(recent[:, -1]))

    def image_embeds(self, pixel_values: Tensor) -> Tensor:
        """CLIP-normalized pixels `(1, 3, S, S)` -> image embeds `(1, 64, D)` (docs/design.md §2.1 step 4)."""
        vision = self.backbone.vision_model
        hidden = vision(pixel_values=pixel_values).last_hidden_state
        hidden = vision.model.post_layernorm(hidden)
        hidden = F.normalize(hidden, dim=-1)
        embeds, _ = self.backbone.image_to_text_projection(hidden)
        out: Tensor = embeds
        return out

    def encode_frame(self, frame: np.ndarray, pre: Preprocessing) -> Tensor:
        return self.image_embeds(torch.from_numpy(normalize_frame(frame, pre)))

    def action_feature(self, image_embeds: Tensor, prompt_ids: Sequence[int], prompt: PromptSettings) -> Tensor:
        """The last hidden state at the action token, built per layout exactly as docs/design.md §2.2 says."""
        check_choice("layout", prompt.layout, LAYOUTS)
        text = self.backbone.text_model.model
        embed = text.embed_tokens
        action = self.action_token.view(1, 1, -1)

        def ids(values: Sequence[int]) -> Tensor:
            return torch.tensor([list(values)], dtype=torch.long)

        if prompt.layout == "robovlms":
            bos, eos = embed(ids([prompt.bos_id])), embed(ids([prompt.eos_id]))
            seq = torch.cat([bos, image_embeds, embed(ids(prompt_ids)), action, eos], dim=1)
            mask = torch.ones(1, seq.shape[1], dtype=torch.long)
            index = seq.shape[1] - 2
        else:
            tokens = [prompt.bos_id, *prompt_ids, prompt.eos_id]
            padding = max(0, FALLBACK_TEXT_SLOTS - len(tokens))
            text_embeds = embed(ids(tokens + [0] * padding)).clone()
            n_img = image_embeds.shape[1]
            text_embeds[:, :n_img] = image_embeds  # HF image_embeds_position_mask over positions 0..63
            seq = torch.cat([text_embeds, action], dim=1)
            mask = torch.tensor([[1] * len(tokens) + [0] * padding + [1]], dtype=torch.long)
            index = seq.shape[1] - 1
        hidden = text(inputs_embeds=seq, attention_mask=mask, use_cache=False).last_hidden_state
        out: Tensor = hidden[:, index]
        return out


@dataclass
class ReferenceStep:
    image_embeds: Tensor
    feature: Tensor
    outputs: dict[str, Tensor]
    history: int


@torch.no_grad()
def run_reference_episode(
    policy: ReferencePolicy,
    frames: Sequence[np.ndarray],
    prompt_ids: Sequence[int],
    prompt: PromptSettings,
    pre: Preprocessing,
) -> list[ReferenceStep]:
    """Output at frame t = the head over the features of the last min(t, window) frames (the LSTM from zero
    state; the MLP head on the last one)."""
    window = policy.head_config.window
    features: list[Tensor] = []
    steps = []
    for frame in frames:
        embeds = policy.encode_frame(frame, pre)
        feature = policy.action_feature(embeds, prompt_ids, prompt)
        features.append(feature)
        recent = features[-window:]
        outputs = policy.head_outputs(torch.stack(recent, dim=1))
        steps.append(ReferenceStep(embeds, feature, outputs, len(recent)))
    return steps
