"""Prompt layout (docs/design.md §2.2): token ids -> the trunk's fixed-length inputs. Tokenized once per instruction.

The trunk graph has a fixed sequence length `L`. Causal attention means tokens after the action token cannot change
its state, so the prompt is padded *after* the action token, keeping its position id exactly as in training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import MobileVLAError
from runtime.preprocess import check_choice

log = logging.getLogger("runtime.prompt")

LAYOUTS = ("robovlms", "mobilevla_fallback", "text")  # text: a text encoder's input, no image slots
OVER_LONG = ("reject", "truncate")  # what to do with an instruction longer than the trunk's prompt slots
PROMPT_TEMPLATE = "<grounding>An image of a robot {instruction}"
FALLBACK_TEXT_SLOTS = 64  # the fork pads prompt ids to 64 tokens, then image embeds overwrite positions 0..63


@dataclass(frozen=True)
class PromptSettings:
    """Stored in the manifest."""

    layout: str
    template: str
    default_instruction: str
    max_prompt_tokens: int  # prompt tokens without <s>/</s> the trunk was exported for
    num_image_tokens: int
    bos_id: int
    eos_id: int
    pad_id: int
    tokenizer_file: str = "tokenizer.json"

    def __post_init__(self) -> None:
        check_choice("layout", self.layout, LAYOUTS)

    @property
    def sequence_length(self) -> int:
        return sequence_length(self.layout, self.max_prompt_tokens, self.num_image_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "template": self.template,
            "default_instruction": self.default_instruction,
            "max_prompt_tokens": self.max_prompt_tokens,
            "num_image_tokens": self.num_image_tokens,
            "sequence_length": self.sequence_length,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "tokenizer_file": self.tokenizer_file,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSettings:
        return cls(
            layout=str(data["layout"]),
            template=str(data["template"]),
            default_instruction=str(data["default_instruction"]),
            max_prompt_tokens=int(data["max_prompt_tokens"]),
            num_image_tokens=int(data["num_image_tokens"]),
            bos_id=int(data["bos_id"]),
            eos_id=int(data["eos_id"]),
            pad_id=int(data["pad_id"]),
            tokenizer_file=str(data.get("tokenizer_file", "tokenizer.json")),
        )


@dataclass(frozen=True)
class TextInputs:
    """The trunk's text-side inputs for one instruction."""

    input_ids: np.ndarray  # (1, L) int64
    attention_mask: np.ndarray  # (1, L) int64
    action_index: np.ndarray  # (1,) int64
    num_prompt_tokens: int

    def feed(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "action_index": self.action_index}


def sequence_length(layout: str, max_prompt_tokens: int, num_image_tokens: int) -> int:
    check_choice("layout", layout, LAYOUTS)
    if layout == "robovlms":
        # [<s>] [image embeds] [prompt] [action] [</s>]
        return 1 + num_image_tokens + max_prompt_tokens + 2
    if layout == "text":
        # [<s>] [prompt] [</s>] [pad...]; action_index points at </s> (where CLIP pools)
        return max_prompt_tokens + 2
    # [<s> prompt </s> padded to 64, image embeds over 0..63] [action]
    return max(FALLBACK_TEXT_SLOTS, max_prompt_tokens + 2) + 1


def image_offset(layout: str) -> int:
    """Sequence position of the first image embed."""
    return 1 if layout == "robovlms" else 0


def layout_text_inputs(prompt_ids: list[int], settings: PromptSettings) -> TextInputs:
    """Place the prompt ids (no <s>/</s>) into the fixed-length trunk inputs for the bundle's layout."""
    if len(prompt_ids) > settings.max_prompt_tokens:
        raise MobileVLAError(
            f"the instruction's prompt has {len(prompt_ids)} tokens; this bundle's trunk was exported for at most "
            f"{settings.max_prompt_tokens}. Shorten the instruction, or rebuild the bundle with "
            f"`build_engines --max-prompt-tokens {len(prompt_ids)}` (or more)"
        )
    length = settings.sequence_length
    ids = np.full((1, length), settings.pad_id, dtype=np.int64)
    mask = np.zeros((1, length), dtype=np.int64)
    n_img = settings.num_image_tokens
    if settings.layout == "robovlms":
        action = 1 + n_img + len(prompt_ids)
        ids[0, 0] = settings.bos_id
        ids[0, 1 + n_img : action] = prompt_ids
        ids[0, action + 1] = settings.eos_id
        mask[0, : action + 2] = 1
    elif settings.layout == "text":
        text = [settings.bos_id, *prompt_ids, settings.eos_id]
        ids[0, : len(text)] = text
        mask[0, : len(text)] = 1
        action = len(text) - 1
    else:
        text = [settings.bos_id, *prompt_ids, settings.eos_id]
        action = max(FALLBACK_TEXT_SLOTS, len(text))
        ids[0, :action] = 0  # the fork right-pads with id 0, attention mask 0 on the padding
        ids[0, : len(text)] = text
        mask[0, : len(text)] = 1
        mask[0, action] = 1
    return TextInputs(ids, mask, np.array([action], dtype=np.int64), len(prompt_ids))


class PromptEncoder:
    """Tokenizes instructions with the bundle's `tokenizer.json` (the `tokenizers` library, no transformers)."""

    def __init__(self, tokenizer_path: Path, settings: PromptSettings, over_long: str = "reject") -> None:
        from tokenizers import Tokenizer

        check_choice("instruction over_long", over_long, OVER_LONG)
        self.over_long = over_long
        if not tokenizer_path.is_file():
            raise MobileVLAError(f"tokenizer file {tokenizer_path} is missing; rebuild the bundle with build_engines")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.settings = settings

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the filled template, without <s>/</s> (layouts add them)."""
        if not instruction.strip():
            raise MobileVLAError("the instruction is empty; pass --instruction TEXT or set a default in the bundle")
        text = self.settings.template.format(instruction=instruction.strip())
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def encode(self, instruction: str) -> TextInputs:
        """The trunk's text inputs. Over-long prompts raise (`reject`) or lose their tail (`truncate`, warned)."""
        ids = self.prompt_ids(instruction)
        limit = self.settings.max_prompt_tokens
        if len(ids) > limit and self.over_long == "truncate":
            kept = self._tokenizer.decode(ids[:limit])
            log.warning("instruction %r has %d prompt tokens, the trunk takes %d: truncated to %r", instruction,
                        len(ids), limit, kept)
            ids = ids[:limit]
        return layout_text_inputs(ids, self.settings)
