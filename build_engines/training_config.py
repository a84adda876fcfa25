"""The RoboVLMs training config JSON (docs/design.md §2.4): read with every used key type- and range-checked, and
written for the demo's and the tests' checkpoints.

A wrong type or value is refused with a message that names the key: a config is hand-edited JSON, and a bad value
(`"window_size": "eight"`, `lora_r: 0`, `norm_max: NaN`, norm_min/norm_max swapped) would otherwise crash deep in the
build or, worse, build a bundle that flips the sign of every velocity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_engines.presets import HeadConfig
from runtime.bundle import ActionSettings
from runtime.errors import MobileVLAError
from runtime.preprocess import CLIP_MEAN, CLIP_STD, normalization_problems
from runtime.value_checks import denormalization_problems

IMAGE_SIZE = 224  # Kosmos-2's ViT input; the bundle's vision graph takes exactly this
# Ranges of the integer keys: generous, but a value outside is a typo, not a policy.
INT_RANGES = {
    "window_size": (1, 64),  # history frames the head sees
    "fwd_pred_next_n": (1, 64),  # chunk length
    "act_head.action_dim": (1, 16),
    "act_head.hidden_size": (1, 65536),
    "train_setup.lora_r": (1, 4096),
}
MISSING = object()


@dataclass(frozen=True)
class TrainingConfig:
    """The fields of a RoboVLMs training config this project uses."""

    window_size: int
    fwd_pred_next_n: int
    action_dim: int
    hidden_size: int
    lora_enable: bool
    lora_r: int | None
    lora_alpha: float | None
    action: ActionSettings
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    raw: dict[str, Any]

    @property
    def data_dir(self) -> Path | None:
        """The training episodes (`train_dataset.data_dir`): the default calibration data for `--int8`."""
        dataset = self.raw.get("train_dataset")
        value = dataset.get("data_dir") if isinstance(dataset, dict) else None
        return Path(value) if value else None


def default_training_config(head: HeadConfig, action: ActionSettings) -> TrainingConfig:
    """The config a checkpoint-less (random-weight) policy is described by."""
    return TrainingConfig(
        window_size=head.window, fwd_pred_next_n=head.chunk, action_dim=head.action_dim, hidden_size=head.hidden_size,
        lora_enable=False, lora_r=None, lora_alpha=None, action=action, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        raw={},
    )


class ConfigReader:
    """Typed access to one config's keys; every refusal names the file and the dotted key."""

    def __init__(self, raw: Mapping[str, Any], source: Path) -> None:
        self.raw, self.source = raw, source

    def fail(self, key: str, expected: str, value: Any) -> MobileVLAError:
        return MobileVLAError(
            f"training config {self.source}: `{key}` must be {expected}, got {value!r}. Fix it in the JSON (it must "
            f"be the config the checkpoint was trained with; RoboVLMs writes it next to the run)"
        )

    def get(self, key: str, default: Any = MISSING) -> Any:
        node: Any = self.raw
        for i, part in enumerate(key.split(".")):
            if node is None and i > 0 and default is not MISSING:
                return default  # `"train_setup": null` reads as no train_setup
            if not isinstance(node, Mapping):
                raise self.fail(".".join(key.split(".")[:i]), "a JSON object", node)
            if part not in node:
                if default is not MISSING:
                    return default
                raise MobileVLAError(
                    f"training config {self.source} has no `{key}`; it is required. Use the JSON the checkpoint was "
                    f"trained with (RoboVLMs writes it next to the run)"
                )
            node = node[part]
        return node

    def integer(self, key: str) -> int:
        low, high = INT_RANGES[key]
        value = self.get(key)
        if not is_int(value) or not low <= value <= high:
            raise self.fail(key, f"an integer in [{low}, {high}]", value)
        return int(value)

    def number(self, value: Any, key: str) -> float:
        if not is_number(value) or not math.isfinite(value):
            raise self.fail(key, "a finite number", value)
        return float(value)

    def positive(self, key: str) -> float:
        value = self.get(key)
        if not is_number(value) or not math.isfinite(value) or value <= 0:
            raise self.fail(key, "a finite number > 0", value)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def numbers(self, key: str) -> tuple[float, ...]:
        """A number or a non-empty list of numbers, each finite."""
        value = self.get(key)
        if isinstance(value, list) and value:
            return tuple(self.number(v, f"{key}[{i}]") for i, v in enumerate(value))
        if isinstance(value, list):
            raise self.fail(key, "a number or a non-empty list of numbers", value)
        return (self.number(value, key),)

    def triple(self, key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
        value = self.get(key, list(default))
        if not isinstance(value, list) or len(value) != 3:
            raise self.fail(key, "a list of 3 numbers", value)
        a, b, c = (self.number(v, f"{key}[{i}]") for i, v in enumerate(value))
        return (a, b, c)

    def optional_object(self, key: str) -> None:
        value = self.get(key, None)
        if value is not None and not isinstance(value, Mapping):
            raise self.fail(key, "a JSON object", value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MobileVLAError(f"training config {path} does not exist; pass --config with the run's JSON config")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MobileVLAError(
            f"training config {path} is not valid JSON ({exc}); pass --config with the run's JSON config (the "
            f"checkpoint goes to --checkpoint)"
        ) from exc
    if not isinstance(raw, dict):
        raise MobileVLAError(f"training config {path} must hold a JSON object, got a {type(raw).__name__}")
    return raw


def read_action(reader: ConfigReader, action_dim: int) -> ActionSettings:
    """`norm_action` with `norm_min`/`norm_max`: finite, within bounds, and norm_min < norm_max on every axis."""
    if not reader.boolean("norm_action", False):
        return ActionSettings(norm_action=False)
    low, high = reader.numbers("norm_min"), reader.numbers("norm_max")
    problems = denormalization_problems(low, high, action_dim)
    if problems:
        raise MobileVLAError(
            f"training config {reader.source}: norm_min/norm_max cannot de-normalize the actions: "
            f"{'; '.join(problems)}. Fix them in the JSON: they must be the bounds the actions were normalized with "
            f"in training, norm_min below norm_max"
        )
    return ActionSettings(norm_action=True, norm_min=low, norm_max=high)


def read_image_settings(reader: ConfigReader) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    size = reader.get("image_size", IMAGE_SIZE)
    if size != IMAGE_SIZE or not is_int(size):
        raise reader.fail("image_size", f"{IMAGE_SIZE} (Kosmos-2's vision input)", size)
    mean, std = reader.triple("image_mean", CLIP_MEAN), reader.triple("image_std", CLIP_STD)
    problems = normalization_problems(mean, std)
    if problems:
        raise MobileVLAError(
            f"training config {reader.source}: image_mean/image_std cannot normalize images: {'; '.join(problems)}. "
            f"Fix them in the JSON (Kosmos-2 was trained with the CLIP values {list(CLIP_MEAN)} / {list(CLIP_STD)})"
        )
    return mean, std


def read_training_config(path: Path) -> TrainingConfig:
    raw = load_json(path)
    reader = ConfigReader(raw, path)
    reader.optional_object("train_setup")
    reader.optional_object("train_dataset")
    data_dir = reader.get("train_dataset.data_dir", None)
    if data_dir is not None and not (isinstance(data_dir, str) and data_dir):
        raise reader.fail("train_dataset.data_dir", "a directory path (a string)", data_dir)
    lora = reader.boolean("train_setup.lora_enable", False)
    action_dim = reader.integer("act_head.action_dim")
    mean, std = read_image_settings(reader)
    return TrainingConfig(
        window_size=reader.integer("window_size"),
        fwd_pred_next_n=reader.integer("fwd_pred_next_n"),
        action_dim=action_dim,
        hidden_size=reader.integer("act_head.hidden_size"),
        lora_enable=lora,
        lora_r=reader.integer("train_setup.lora_r") if lora else None,
        lora_alpha=reader.positive("train_setup.lora_alpha") if lora else None,
        action=read_action(reader, action_dim),
        image_mean=mean,
        image_std=std,
        raw=raw,
    )


def decoder_type(head: HeadConfig) -> str:
    if head.kind == "mlp":
        return "FCDecoder"
    return "MobileVLALSTMDecoder" if head.variant == "velocities" else "LSTMDecoder"


def write_training_config(path: Path, head: HeadConfig, lora_r: int, lora_alpha: float,
                          action: ActionSettings, extra: Mapping[str, Any] | None = None) -> None:
    """A RoboVLMs-style training config JSON matching a written checkpoint (`lora_r` 0: no LoRA)."""
    config: dict[str, Any] = {
        "model": "kosmos",
        "window_size": head.window,
        "fwd_pred_next_n": head.chunk,
        "act_head": {
            "type": decoder_type(head),
            "hidden_size": head.hidden_size,
            "action_dim": head.action_dim,
            "down_sample": "none",
            "latent": 1,
            "window_size": 1,
            "fwd_pred_next_n": 1,
        },
        "train_setup": ({"lora_enable": True, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": 0.05}
                        if lora_r else {"lora_enable": False}),
        "norm_action": action.norm_action,
        "norm_min": list(action.norm_min) if len(action.norm_min) > 1 else action.norm_min[0],
        "norm_max": list(action.norm_max) if len(action.norm_max) > 1 else action.norm_max[0],
        "image_size": IMAGE_SIZE,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        **(extra or {}),
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
