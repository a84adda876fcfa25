from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.errors import MobileVLAError
from runtime.prompt import PROMPT_TEMPLATE, PromptEncoder, PromptSettings, layout_text_inputs


def settings(layout: str, max_tokens: int = 8) -> PromptSettings:
    return PromptSettings(layout, PROMPT_TEMPLATE, "go", max_tokens, num_image_tokens=64, bos_id=0, eos_id=2, pad_id=1)


def test_robovlms_layout_places_action_token_after_prompt() -> None:
    s = settings("robovlms")
    assert s.sequence_length == 1 + 64 + 8 + 2
    text = layout_text_inputs([10, 11, 12], s)
    ids, mask = text.input_ids[0], text.attention_mask[0]
    assert ids[0] == 0 and list(ids[65:68]) == [10, 11, 12]
    assert int(text.action_index[0]) == 68 and ids[69] == 2  # [<s>][64 img][prompt][action][</s>]
    assert mask[:70].all() and not mask[70:].any()


def test_fallback_layout_pads_to_64_with_zero_and_masks_padding() -> None:
    s = settings("mobilevla_fallback")
    assert s.sequence_length == 65
    text = layout_text_inputs([10, 11, 12], s)
    ids, mask = text.input_ids[0], text.attention_mask[0]
    assert list(ids[:5]) == [0, 10, 11, 12, 2] and not ids[5:64].any()
    assert list(mask[:5]) == [1] * 5 and not mask[5:64].any() and mask[64] == 1
    assert int(text.action_index[0]) == 64


def test_fallback_layout_longer_than_64_tokens_keeps_the_tail_of_the_prompt() -> None:
    s = settings("mobilevla_fallback", max_tokens=70)
    assert s.sequence_length == 73
    prompt = list(range(10, 75))  # 65 tokens: with <s>,</s> 67 > 64
    text = layout_text_inputs(prompt, s)
    assert int(text.action_index[0]) == 67 and text.attention_mask[0, :68].all()


def test_too_long_instruction_names_the_limit_and_the_fix() -> None:
    with pytest.raises(MobileVLAError, match=r"has 9 tokens; .* at most 8\. .*--max-prompt-tokens 9"):
        layout_text_inputs(list(range(9)), settings("robovlms"))


def test_bundle_tokenizer_uses_kosmos_special_roles(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    encoder = PromptEncoder(bundle.path("tokenizer.json"), bundle.manifest.prompt)
    ids = encoder.prompt_ids("turn left")
    assert ids[0] == 4  # <grounding> is one added token; <s>/</s> are added by the layout, not the tokenizer
    assert 0 not in ids and 2 not in ids
    text = encoder.encode("turn left")
    assert text.input_ids.dtype == np.int64 and text.input_ids.shape == (1, bundle.manifest.prompt.sequence_length)
    with pytest.raises(MobileVLAError, match="instruction is empty"):
        encoder.encode("   ")
    with pytest.raises(MobileVLAError, match=r"--max-prompt-tokens"):
        encoder.encode("go " * 200)
