"""The manifest's `policy` and `action` sections (docs/design.md §3): what the policy is, and how its raw output
becomes velocities. Read and written with the rest of the bundle format in runtime/bundle.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.errors import MobileVLAError
from runtime.specs import HEAD_VARIANTS

DEFAULT_FAMILY = "robovlms-lstm"  # what a bundle written before `family` holds


@dataclass(frozen=True)
class PolicySettings:
    head_variant: str  # velocities | actions_gripper (the last part's outputs)
    chunk: int  # fwd_pred_next_n
    window: int  # window_size (1: the family keeps no history)
    action_dim: int
    lstm_hidden: int  # 0: no LSTM
    text_dim: int  # the width of the feature the head reads
    family: str = DEFAULT_FAMILY  # the adapter that built it (build_engines --policy)
    details: dict[str, Any] = field(default_factory=dict)  # the family's own settings, e.g. ensemble weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "head_variant": self.head_variant,
            "fwd_pred_next_n": self.chunk,
            "window_size": self.window,
            "action_dim": self.action_dim,
            "lstm_hidden_size": self.lstm_hidden,
            "text_dim": self.text_dim,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicySettings:
        variant = str(data["head_variant"])
        if variant not in HEAD_VARIANTS:
            raise MobileVLAError(f"manifest head_variant {variant!r} is unknown; expected one of {HEAD_VARIANTS}")
        return cls(
            head_variant=variant,
            chunk=int(data["fwd_pred_next_n"]),
            window=int(data["window_size"]),
            action_dim=int(data["action_dim"]),
            lstm_hidden=int(data["lstm_hidden_size"]),
            text_dim=int(data["text_dim"]),
            family=str(data.get("family", DEFAULT_FAMILY)),
            details=dict(data.get("details", {})),
        )


@dataclass(frozen=True)
class ActionSettings:
    """De-normalization (from training) and output scaling defaults (runtime flags override scale and limit)."""

    norm_action: bool = False
    norm_min: tuple[float, ...] = (-1.0,)
    norm_max: tuple[float, ...] = (1.0,)
    output_scale: float = 1.0
    output_limit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm_action": self.norm_action,
            "norm_min": list(self.norm_min),
            "norm_max": list(self.norm_max),
            "output_scale": self.output_scale,
            "output_limit": self.output_limit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionSettings:
        limit = data.get("output_limit")
        return cls(
            norm_action=bool(data["norm_action"]),
            norm_min=tuple(float(v) for v in data["norm_min"]),
            norm_max=tuple(float(v) for v in data["norm_max"]),
            output_scale=float(data.get("output_scale", 1.0)),
            output_limit=None if limit is None else float(limit),
        )


