"""FLOPs, weights and activations of the three parts, counted from the model's shapes (no weights, no export).

What is counted, per frame (docs/design.md §2-3):
- FLOPs of the matrix products only (MatMul/Gemm/Conv/LSTM gates), a multiply-add as 2. LayerNorm, softmax, GELU,
  residual adds and the LSTM's gate nonlinearities are left out: under 1% of the FLOPs, and memory traffic that
  TensorRT fuses into the neighbouring kernels.
- vision: patch convolution, 24 CLIP layers over 257 tokens, then `image_to_text_projection`: dense 1024->2048 and the
  cross-attention of 64 latent queries over [projected tokens ; latent queries]. The latent queries are constants, so
  their query projection is folded at export (the graph holds its result, not the 2048x2048 weight).
- trunk: the embedding lookup (no FLOPs; of the 65037x2048 table only the L looked-up rows are read per frame, but
  the whole table is in the engine), 24 decoder layers over the padded sequence L, the final layer norm. No LM head.
- head: the 4-layer LSTM over all `window` steps (the graph has a fixed window) and the MLP(s) on the last step.

Weights: elements that become INT8 in the INT8 engine (`quantized`: weight inputs of MatMul/Gemm, less those kept
float, by default the image-to-text projection) and elements that stay float (biases, norms, tables, conv, LSTM).
Activations: the traffic if every counted op read its activation inputs from DRAM and wrote its output back
(unfused; the floor assumes they stay on chip or are fused, see estimate.py), and the peak live activation memory,
estimated as the largest op's inputs plus output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.errors import MobileVLAError
from runtime.prompt import sequence_length

MLP_WIDTHS = (1024, 512, 256)  # build_engines.reference.MLP_WIDTHS: RoboVLMs' MLPTanhHead


@dataclass(frozen=True)
class VisionDims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int
    patch_size: int
    channels: int = 3

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + class token


@dataclass(frozen=True)
class TextDims:
    vocab: int
    width: int
    layers: int
    ffn: int
    heads: int


@dataclass(frozen=True)
class HeadDims:
    hidden: int
    layers: int = 4
    window: int = 8
    outputs: tuple[int, ...] = (20,)  # one MLP per output: velocities (n*d,), or actions (n*(d-1),) + gripper (n,)

    @classmethod
    def of(cls, hidden: int, variant: str, chunk: int = 10, action_dim: int = 2, window: int = 8,
           layers: int = 4) -> HeadDims:
        outputs = (chunk * action_dim,) if variant == "velocities" else (chunk * (action_dim - 1), chunk)
        return cls(hidden=hidden, layers=layers, window=window, outputs=outputs)


@dataclass(frozen=True)
class ModelDims:
    preset: str
    vision: VisionDims
    text: TextDims
    latent_queries: int
    head: HeadDims
    layout: str
    max_prompt_tokens: int

    @property
    def sequence_length(self) -> int:
        return sequence_length(self.layout, self.max_prompt_tokens, self.latent_queries)


# The presets' shapes, as build_engines.presets.kosmos_config builds them (a test checks they agree); kept here so
# that the plan needs neither transformers nor torch. kosmos-2 = microsoft/kosmos-2-patch14-224; its head is the
# Mobile VLA one (LSTM hidden 512, as `--random-weights` builds it), the tiny one the demo's (hidden 64).
PRESET_SHAPES: dict[str, tuple[VisionDims, TextDims, int]] = {
    "tiny": (VisionDims(32, 64, 2, 2, 224, 14), TextDims(512, 64, 2, 128, 4), 64),
    "mid": (VisionDims(512, 2048, 8, 8, 224, 14), TextDims(65037, 1024, 12, 4096, 16), 64),
    "kosmos-2": (VisionDims(1024, 4096, 24, 16, 224, 14), TextDims(65037, 2048, 24, 8192, 32), 64),
}
PRESET_NAMES = tuple(PRESET_SHAPES)  # build_engines.presets.PRESETS (that module imports transformers)
# adapters/robovlms.py RoboVLMsAdapter.head: tiny_head() for tiny, else HeadConfig()
PRESET_LSTM_HIDDEN = {"tiny": 64, "mid": 512, "kosmos-2": 512}


def preset_dims(preset: str, layout: str = "robovlms", max_prompt_tokens: int = 32,
                head: HeadDims | None = None) -> ModelDims:
    if preset not in PRESET_SHAPES:
        raise MobileVLAError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_NAMES)}")
    vision, text, latents = PRESET_SHAPES[preset]
    head = head or HeadDims.of(PRESET_LSTM_HIDDEN[preset], "velocities")
    return ModelDims(preset, vision, text, latents, head, layout, max_prompt_tokens)


def dims_from_config(config: Any, head: HeadDims, layout: str, max_prompt_tokens: int,
                     name: str = "config") -> ModelDims:
    """The dims of a Kosmos2Config (or anything with the same attributes)."""
    t, v = config.text_config, config.vision_config
    vision = VisionDims(int(v.hidden_size), int(v.intermediate_size), int(v.num_hidden_layers),
                        int(v.num_attention_heads), int(v.image_size), int(v.patch_size), int(v.num_channels))
    text = TextDims(int(t.vocab_size), int(t.embed_dim), int(t.layers), int(t.ffn_dim), int(t.attention_heads))
    return ModelDims(name, vision, text, int(config.latent_query_num), head, layout, max_prompt_tokens)


@dataclass(frozen=True)
class Op:
    """One matrix product, `count` times (e.g. once per layer). Element counts are per instance."""

    name: str
    flops: int
    count: int = 1
    quantized: int = 0  # weight elements that are INT8 in the INT8 engine
    float_weights: int = 0  # weight elements that stay float (biases, conv, LSTM, kept-float layers)
    act_in: int = 0
    act_out: int = 0


@dataclass(frozen=True)
class Const:
    """Weights outside the counted ops: norms, embeddings, position tables, masks."""

    name: str
    elements: int
    read: int  # elements read per frame (an embedding lookup reads only its rows)
    itemsize: int = 0  # 0: float (its size follows the precision); else fixed (a bool mask: 1)


@dataclass(frozen=True)
class PartCount:
    name: str
    ops: tuple[Op, ...]
    consts: tuple[Const, ...] = ()
    io_bytes: int = 0  # the part's inputs and outputs as the spec types them (uint8 frame, float32, int64)

    @property
    def flops(self) -> int:
        return sum(op.flops * op.count for op in self.ops)

    @property
    def int8_flops(self) -> int:
        """FLOPs of the ops with INT8 weights: these run on the INT8 tensor cores in the INT8 engine."""
        return sum(op.flops * op.count for op in self.ops if op.quantized)

    @property
    def quantized_weights(self) -> int:
        return sum(op.quantized * op.count for op in self.ops)

    @property
    def float_weights(self) -> int:
        return sum(op.float_weights * op.count for op in self.ops) + sum(c.elements for c in self.consts
                                                                         if not c.itemsize)

    @property
    def parameters(self) -> int:
        return self.quantized_weights + self.float_weights + sum(c.elements for c in self.consts if c.itemsize)


def linear(name: str, tokens: int, fan_in: int, fan_out: int, count: int = 1, quantized: bool = True,
           bias: bool = True) -> Op:
    weights = fan_in * fan_out
    return Op(name, 2 * tokens * fan_in * fan_out, count, weights if quantized else 0,
              (0 if quantized else weights) + (fan_out if bias else 0), tokens * fan_in, tokens * fan_out)


def attention(prefix: str, queries: int, keys: int, width: int, heads: int, count: int = 1) -> tuple[Op, Op]:
    """Q·Kᵀ and P·V between activations (no weights: they stay float in the INT8 engine)."""
    scores = heads * queries * keys
    qk = Op(f"{prefix}.q_kT", 2 * queries * keys * width, count, act_in=(queries + keys) * width, act_out=scores)
    pv = Op(f"{prefix}.p_v", 2 * queries * keys * width, count, act_in=scores + keys * width, act_out=queries * width)
    return qk, pv


def vision_count(dims: ModelDims, projection_int8: bool = False) -> PartCount:
    v, d_text, latents = dims.vision, dims.text.width, dims.latent_queries
    tokens, d, n = v.tokens, v.hidden, v.layers
    patch = v.channels * v.patch_size ** 2
    ops = [
        Op("patch_embedding", 2 * (tokens - 1) * d * patch, float_weights=d * patch,  # Conv: not quantized
           act_in=v.channels * v.image_size ** 2, act_out=(tokens - 1) * d),
        *(linear(f"layers.{p}", tokens, d, d, n) for p in ("q_proj", "k_proj", "v_proj")),
        *attention("layers.self_attn", tokens, tokens, d, v.heads, n),
        linear("layers.out_proj", tokens, d, d, n),
        linear("layers.fc1", tokens, d, v.intermediate, n),
        linear("layers.fc2", tokens, v.intermediate, d, n),
        linear("projection.dense", tokens, d, d_text, quantized=projection_int8),
        linear("projection.k_proj", tokens + latents, d_text, d_text, quantized=projection_int8),
        linear("projection.v_proj", tokens + latents, d_text, d_text, quantized=projection_int8),
        *attention("projection.x_attn", latents, tokens + latents, d_text, dims.text.heads),
        linear("projection.out_proj", latents, d_text, d_text, quantized=projection_int8),
    ]
    consts = (
        Const("class_and_position_embeddings", d + tokens * d, d + tokens * d),
        Const("layer_norms", 2 * d * (2 * n + 2), 2 * d * (2 * n + 2)),  # pre, 2 per layer, post
        # The latent queries, and their query projection folded at export (input-independent).
        Const("latent_queries_and_folded_query_projection", 2 * latents * d_text, 2 * latents * d_text),
    )
    io = v.image_size ** 2 * 4 + latents * d_text * 4  # RGBA uint8 frame (the default) -> float32 image embeds
    return PartCount("vision", tuple(ops), consts, io)


def trunk_count(dims: ModelDims) -> PartCount:
    t, length = dims.text, dims.sequence_length
    d, n = t.width, t.layers
    ops = (
        *(linear(f"layers.{p}", length, d, d, n) for p in ("q_proj", "k_proj", "v_proj")),
        *attention("layers.self_attn", length, length, d, t.heads, n),
        linear("layers.out_proj", length, d, d, n),
        linear("layers.fc1", length, d, t.ffn, n),
        linear("layers.fc2", length, t.ffn, d, n),
    )
    consts = (
        Const("embed_tokens", t.vocab * d, length * d),  # the engine holds the table; a frame reads L rows
        Const("positions", length * d, length * d),  # sinusoidal positions, fixed at export
        Const("action_token", d, d),
        # per layer: self_attn_layer_norm, inner_attn_ln, final_layer_norm (d wide), ffn_layernorm (ffn wide)
        Const("layer_norms", n * (6 * d + 2 * t.ffn) + 2 * d, n * (6 * d + 2 * t.ffn) + 2 * d),
        Const("causal_mask", length * length, length * length, itemsize=1),
    )
    io = dims.latent_queries * d * 4 + 3 * length * 8 + 8 + d * 4  # embeds, ids/mask/index (int64) -> feature
    return PartCount("trunk", ops, consts, io)


def head_count(dims: ModelDims) -> PartCount:
    h, d, steps = dims.head.hidden, dims.text.width, dims.head.window
    ops = []
    for layer in range(dims.head.layers):
        fan_in = d if layer == 0 else h
        gates = 4 * h * (fan_in + h)
        ops.append(Op(f"lstm.{layer}", 2 * steps * gates, float_weights=gates + 8 * h,  # W, R and both biases
                      act_in=steps * fan_in, act_out=steps * h))
    for index, out in enumerate(dims.head.outputs):
        widths = (h, *MLP_WIDTHS, out)
        ops += [linear(f"mlp{index}.{k}", 1, widths[k], widths[k + 1]) for k in range(len(widths) - 1)]
    io = steps * d * 4 + 8 + sum(dims.head.outputs) * 4  # features, history_len -> chunk
    return PartCount("head", tuple(ops), (), io)


def part_counts(dims: ModelDims, projection_int8: bool = False) -> dict[str, PartCount]:
    return {"vision": vision_count(dims, projection_int8), "trunk": trunk_count(dims), "head": head_count(dims)}
