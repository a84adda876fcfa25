"""Model presets (docs/design.md §5): `tiny` (same module structure, small widths), `mid` (the real structure and
vocabulary at widths between the two, so a CPU latency measurement means something) and `kosmos-2` (the real
shapes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import Kosmos2Config

from runtime.errors import MobileVLAError
from runtime.specs import HEAD_VARIANTS

PRESETS = ("tiny", "mid", "kosmos-2")
HEAD_KINDS = ("lstm", "mlp", "ensemble")  # RoboVLMs' LSTMDecoder, FCDecoder, both with fixed weights
TINY_VOCAB = 512
NUM_IMAGE_TOKENS = 64  # Kosmos-2's latent queries; both layouts depend on this count


@dataclass(frozen=True)
class HeadConfig:
    """The policy head (docs/design.md §2.3, §2.6). `chunk` = fwd_pred_next_n, `window` = window_size (1 for the
    MLP head: it reads only the current frame's feature). `hidden_size` is the LSTM's (lstm, ensemble) or the
    FCDecoder's (mlp; the ensemble's MLP head: `mlp_hidden`)."""

    variant: str = "velocities"
    hidden_size: int = 512
    num_layers: int = 4
    chunk: int = 10
    window: int = 8
    action_dim: int = 2
    kind: str = "lstm"
    mlp_hidden: int = 0  # the ensemble's FCDecoder width (0: hidden_size)
    weights: tuple[float, float] = (0.5, 0.5)  # ensemble: (LSTM, MLP) weights of the combined chunk

    def __post_init__(self) -> None:
        if self.variant not in HEAD_VARIANTS:
            raise MobileVLAError(f"unknown head variant {self.variant!r}; expected one of {', '.join(HEAD_VARIANTS)}")
        if self.kind not in HEAD_KINDS:
            raise MobileVLAError(f"unknown head kind {self.kind!r}; expected one of {', '.join(HEAD_KINDS)}")
        if self.variant == "actions_gripper" and self.action_dim < 2:
            raise MobileVLAError(f"the actions+gripper head needs action_dim >= 2, got {self.action_dim}")

    @property
    def action_outputs(self) -> int:
        """Width of the actions/velocities MLP's last layer."""
        per_step = self.action_dim if self.variant == "velocities" else self.action_dim - 1
        return self.chunk * per_step


def kosmos_config(preset: str) -> Kosmos2Config:
    """The backbone config of a preset, with eager attention (plain MatMul/Softmax in the exported graphs)."""
    if preset == "tiny":
        text: dict[str, Any] = dict(
            vocab_size=TINY_VOCAB, embed_dim=64, layers=2, ffn_dim=128, attention_heads=4,
            max_position_embeddings=512, dropout=0.0, attention_dropout=0.0,
        )
        vision: dict[str, Any] = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=224, patch_size=14,
        )
        config = Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=NUM_IMAGE_TOKENS)
    elif preset == "mid":
        # Kosmos-2's own vocabulary (65037, the default) and position table; half its text width, layers and FFN;
        # a third of its vision layers at half width. ~1 GB of FP32 weights in all (the trunk 0.87 GB).
        text = dict(embed_dim=1024, layers=12, ffn_dim=4096, attention_heads=16, dropout=0.0, attention_dropout=0.0)
        vision = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                      image_size=224, patch_size=14)
        config = Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=NUM_IMAGE_TOKENS)
    elif preset == "kosmos-2":
        config = Kosmos2Config(latent_query_num=NUM_IMAGE_TOKENS)
    else:
        raise MobileVLAError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return with_eager_attention(config)


def with_eager_attention(config: Any) -> Any:
    """Eager attention (plain MatMul/Softmax in the exported graphs) in a config and its text/vision configs."""
    configs: list[Any] = [config, config.text_config, config.vision_config]
    for cfg in configs:
        cfg._attn_implementation = "eager"
    return config


def tiny_head(variant: str = "velocities", kind: str = "lstm") -> HeadConfig:
    return HeadConfig(variant=variant, hidden_size=64, action_dim=2 if variant == "velocities" else 3, kind=kind,
                      window=1 if kind == "mlp" else 8, mlp_hidden=64 if kind == "ensemble" else 0)
