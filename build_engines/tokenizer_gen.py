"""A small generated `tokenizer.json` for the tiny preset, with Kosmos-2's special-token roles.

Kosmos-2's XLM-R tokenizer has `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3 and the added token `<grounding>`. The tiny
tokenizer keeps those roles (and ids 0..3) so the prompt layouts are exercised exactly as with the real one. It is
byte-level BPE, so any instruction tokenizes, and it is trained deterministically on a fixed corpus.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<grounding>"]
CORPUS = [
    "<grounding>An image of a robot navigate around the box to the left",
    "<grounding>An image of a robot navigate around the box to the right",
    "<grounding>An image of a robot go to the front of the beverage bottle on the left",
    "<grounding>An image of a robot go to the front of the beverage bottle on the right",
    "<grounding>An image of a robot move forward and stop in front of the obstacle",
    "<grounding>An image of a robot turn left, turn right, go straight, avoid the cup, reach the target",
    "one box two boxes vertical horizontal core variant close medium far path target chair table door",
]


def write_tiny_tokenizer(path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.save(str(path))
