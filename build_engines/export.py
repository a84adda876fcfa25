"""Export of the three parts (docs/design.md §3) at fixed shapes, opset 17, through the TorchScript-based exporter.

The export modules re-state the reference's computation in static, export-friendly form: preprocessing inside the
vision graph; the trunk with the prompt padded after the action token, the action token placed with `Where` (no
ScatterND/NonZero) and its state read with `Gather`; the head over a fixed window with a `history_len` input.
Parity against the reference (parity.py) proves the re-statement is exact.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from build_engines.graph_passes import clean_graph, has_external_data, save_model
from build_engines.output_dir import build_temp_dir
from build_engines.reference import ReferencePolicy, combine
from runtime.preprocess import Preprocessing, model_channel_indices
from runtime.prompt import PromptSettings, image_offset
from runtime.specs import PartSpec

log = logging.getLogger("build_engines.export")
NUMPY_TO_TORCH = {"uint8": torch.uint8, "int64": torch.int64, "float32": torch.float32}


class FramePixels(nn.Module):
    """uint8 `(1, S, S, C)` frame -> normalized pixels `(1, 3, S, S)`: channel pick, /255 and the training
    normalization inside the graph (runtime/preprocess.py `normalize_frame` is the same on the host)."""

    channels: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.register_buffer("channels", torch.tensor(model_channel_indices(pre), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(pre.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, frame: Tensor) -> Tensor:
        pixels = frame.to(torch.float32).index_select(3, self.channels).permute(0, 3, 1, 2) / 255.0
        out: Tensor = (pixels - self.mean) / self.std
        return out


class VisionExport(nn.Module):
    """uint8 `(1, S, S, C)` frame -> image embeds `(1, 64, D)`; channel pick, /255 and CLIP norm inside."""

    def __init__(self, policy: ReferencePolicy, pre: Preprocessing) -> None:
        super().__init__()
        self.policy = policy
        self.pixels = FramePixels(pre)

    def forward(self, frame: Tensor) -> Tensor:
        pixels = self.pixels(frame)
        vision = self.policy.backbone.vision_model
        hidden = vision.model.post_layernorm(vision(pixel_values=pixels).last_hidden_state)
        # L2 normalization written out: F.normalize's ReduceL2 does not survive every exporter/opset path.
        hidden = hidden / torch.sqrt((hidden * hidden).sum(dim=-1, keepdim=True)).clamp_min(1e-12)
        embeds, _ = self.policy.backbone.image_to_text_projection(hidden)
        out: Tensor = embeds
        return out


def text_layers(layers: nn.ModuleList, hidden: Tensor, causal: Tensor, attention_mask: Tensor) -> Tensor:
    """A text transformer's layers over `hidden` with causal attention restricted to `attention_mask`'s tokens
    (an additive mask: 0 allowed, float min elsewhere)."""
    allowed = causal.view(1, 1, *causal.shape) & attention_mask.bool()[:, None, None, :]
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    for layer in layers:
        out = layer(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class TrunkExport(nn.Module):
    """Image embeds + padded prompt -> the action token's final hidden state `(1, D)`."""

    positions: Tensor
    sequence: Tensor
    causal: Tensor

    def __init__(self, policy: ReferencePolicy, prompt: PromptSettings) -> None:
        super().__init__()
        text = policy.backbone.text_model.model
        length = prompt.sequence_length
        self.text = text
        self.action_token = policy.action_token
        self.offset = image_offset(prompt.layout)
        self.num_image = prompt.num_image_tokens
        self.scale = float(text.embed_scale)
        dim = policy.text_dim
        positions = text.embed_positions(inputs_embeds=torch.zeros(1, length, dim))  # ids 2..L+1, not mask-aware
        self.register_buffer("positions", positions.detach().clone())
        self.register_buffer("sequence", torch.arange(length, dtype=torch.long))
        self.register_buffer("causal", torch.ones(length, length, dtype=torch.bool).tril())

    def forward(self, image_embeds: Tensor, input_ids: Tensor, attention_mask: Tensor, action_index: Tensor) -> Tensor:
        embeds = self.text.embed_tokens(input_ids)
        end = self.offset + self.num_image
        embeds = torch.cat([embeds[:, : self.offset], image_embeds, embeds[:, end:]], dim=1)
        # Written for any batch (the demo fit trains through this module); exported at batch 1.
        is_action = torch.eq(self.sequence.view(1, -1), action_index.view(-1, 1)).unsqueeze(-1)
        embeds = torch.where(is_action, self.action_token.view(1, 1, -1), embeds)
        hidden = text_layers(self.text.layers, embeds * self.scale + self.positions, self.causal, attention_mask)
        hidden = self.text.layer_norm(hidden)
        if hidden.shape[0] == 1:  # the exported graph: one Gather
            return hidden.index_select(1, action_index).reshape(1, -1)
        return hidden[torch.arange(hidden.shape[0]), action_index]


def ordered(decoded: dict[str, Tensor]) -> tuple[Tensor, ...]:
    return tuple(decoded[name] for name in ("actions", "gripper_logits") if name in decoded)


class HeadExport(nn.Module):
    """Features of the last `window` frames (zero rows past `history_len`) -> the chunk of the current frame; the
    ensemble adds the MLP head on the current (last valid) row and combines the two chunks."""

    def __init__(self, policy: ReferencePolicy) -> None:
        super().__init__()
        self.head = policy.act_head
        self.mlp_head = getattr(policy, "mlp_head", None)
        self.weights = policy.head_config.weights

    def forward(self, features: Tensor, history_len: Tensor) -> tuple[Tensor, ...]:
        out, _ = self.head.rnn(features)
        last = out.index_select(1, history_len - 1).reshape(1, -1)  # causal: later (zero) steps do not matter
        decoded = self.head.decode(last)
        if self.mlp_head is not None:
            current = features.index_select(1, history_len - 1).reshape(1, -1)
            decoded = combine(self.weights, decoded, self.mlp_head(current))
        return ordered(decoded)


class FCHeadExport(nn.Module):
    """The MLP (FCDecoder) head: the current frame's action feature -> its chunk."""

    def __init__(self, policy: ReferencePolicy) -> None:
        super().__init__()
        self.head = policy.act_head

    def forward(self, action_feature: Tensor) -> tuple[Tensor, ...]:
        return ordered(self.head(action_feature))


def export_modules(policy: ReferencePolicy, pre: Preprocessing, prompt: PromptSettings) -> dict[str, nn.Module]:
    head = FCHeadExport(policy) if policy.head_config.kind == "mlp" else HeadExport(policy)
    return {"vision": VisionExport(policy, pre), "trunk": TrunkExport(policy, prompt), "head": head}


def example_inputs(spec: PartSpec) -> tuple[Tensor, ...]:
    """Valid dummy inputs (indices in range) for tracing."""
    values = []
    for t in spec.inputs:
        if t.dtype == "int64":  # indices, lengths and masks: 1 is valid everywhere
            values.append(torch.ones(t.shape, dtype=torch.int64))
        else:
            values.append(torch.zeros(t.shape, dtype=NUMPY_TO_TORCH[t.dtype]))
    return tuple(values)


@torch.no_grad()
def export_part(module: nn.Module, spec: PartSpec, path: Path) -> str | None:
    """Trace-export one part, clean the graph, save it; returns the external data file name, if any."""
    module.eval()
    with build_temp_dir() as tmp, warnings.catch_warnings():  # named for output_dir.remove_stale
        # The tracer warns about Python-level shape checks; shapes are fixed by design, so they are constants.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Batch is fixed at 1 and the LSTM's initial state is zero by definition (docs/design.md §2.3): nothing to heed.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        raw = Path(tmp) / f"{spec.name}.onnx"
        torch.onnx.export(
            module,
            example_inputs(spec),
            str(raw),
            input_names=spec.input_names(),
            output_names=spec.output_names(),
            opset_version=spec.opset,
            do_constant_folding=True,
            dynamo=False,
        )
        # Weights past 2 GB come out in external files: keep them there while the graph is cleaned (gs passes
        # carry un-loaded tensors through untouched), then load them once to write the bundle's single data file.
        model = onnx.load(str(raw), load_external_data=False)
        large = has_external_data(model)
        if large:
            log.info("%s: weights exceed 2 GB; constant folding by the exporter only, graph clean-up by gs", spec.name)
        cleaned = clean_graph(model, spec.output_names(), fold=not large)
        if large:
            onnx.load_external_data_for_model(cleaned, tmp)
        return save_model(cleaned, path)
