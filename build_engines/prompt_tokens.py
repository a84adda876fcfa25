"""The bundle's tokenizer (docs/design.md §3): which `tokenizer.json` a build uses, and the prompt settings read
from it.

A trained policy's prompt ids only mean something with the tokenizer it was trained with, so a checkpoint build
needs one named explicitly (`--tokenizer FILE`, or the `--kosmos-dir` it came from). Only the demo and
`--random-weights` builds, whose weights were never trained on real prompts, use the generated tiny tokenizer.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from build_engines.presets import NUM_IMAGE_TOKENS, TINY_VOCAB
from build_engines.tokenizer_gen import write_tiny_tokenizer
from runtime.bundle import sha256_file
from runtime.errors import MobileVLAError
from runtime.prompt import PROMPT_TEMPLATE, PromptSettings

if TYPE_CHECKING:
    from build_engines.reference import ReferencePolicy

log = logging.getLogger("build_engines")

TOKENIZER_FILE = "tokenizer.json"
GENERATED = "generated (tiny preset)"
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<grounding>")
KOSMOS_SPECIALS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}  # roles -> token (Kosmos-2; the generated tokenizer)


def tokenizer_source(tokenizer: Path | None, kosmos_dir: Path | None, generated_ok: bool) -> Path | None:
    """The tokenizer.json a build copies into the bundle: `--tokenizer`, else the `--kosmos-dir` one; None means
    the generated tiny tokenizer, allowed only where `generated_ok` (the demo, `--random-weights`)."""
    if tokenizer is not None:
        if not tokenizer.is_file():
            raise MobileVLAError(
                f"--tokenizer {tokenizer} does not exist or is not a file; pass the tokenizer.json the policy was "
                f"trained with (Kosmos-2's: `AutoProcessor.from_pretrained(DIR).tokenizer.save_pretrained(DIR)`)"
            )
        return tokenizer
    if kosmos_dir is not None:
        source = kosmos_dir / TOKENIZER_FILE
        if not source.is_file():
            raise MobileVLAError(
                f"Kosmos-2 directory {kosmos_dir} has no {TOKENIZER_FILE}; save it there with "
                f"`AutoProcessor.from_pretrained(DIR).tokenizer.save_pretrained(DIR)` on a machine that has it, or "
                f"pass --tokenizer FILE"
            )
        return source
    if generated_ok:
        return None
    raise MobileVLAError(
        "--checkpoint needs the tokenizer the policy was trained with: pass --kosmos-dir DIR (holding its "
        "tokenizer.json) or --tokenizer FILE. Without one the prompt ids would mean nothing to the trained weights "
        "(the generated tokenizer is only for the demo and --random-weights)"
    )


def write_tokenizer(source: Path | None, stage: Path, preset: str) -> dict[str, str]:
    """Copy (or, for None, generate) the tokenizer into the staged bundle; returns where it came from and its
    sha256, for the manifest's source record."""
    target = stage / TOKENIZER_FILE
    if source is None:
        if preset != "tiny":
            log.warning("the generated tiny tokenizer at the %s preset's shapes: prompts will not match a trained "
                        "Kosmos-2 policy (fine for random-weight export tests only)", preset)
        write_tiny_tokenizer(target, vocab_size=TINY_VOCAB)
        origin = GENERATED
    else:
        shutil.copyfile(source, target)
        origin = str(source)
    return {"tokenizer": origin, "tokenizer_sha256": sha256_file(target)}


def special_token_ids(tokenizer: Path, label: Path | str | None = None,
                      tokens: Sequence[str] = SPECIAL_TOKENS) -> tuple[dict[str, int], int]:
    """The Kosmos-2 special tokens' ids in `tokenizer` and its vocabulary size; `label` names the file in messages
    (the user's file when `tokenizer` is its copy in the staged bundle)."""
    from tokenizers import Tokenizer

    name = label or tokenizer
    try:
        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # the tokenizers binding raises plain Exception for any unreadable file
        raise MobileVLAError(
            f"tokenizer {name} is not a readable tokenizer.json ({exc}); pass the file `tokenizer.save_pretrained` "
            f"wrote"
        ) from exc
    found = {token: tok.token_to_id(token) for token in tokens}
    absent = [token for token, value in found.items() if value is None]
    if absent:
        raise MobileVLAError(
            f"tokenizer {name} lacks the special tokens {absent}; pass the tokenizer.json the policy was trained "
            f"with"
        )
    ids = {token: int(value) for token, value in found.items() if value is not None}
    return ids, int(tok.get_vocab_size(with_added_tokens=True))


def special_roles(tokenizer: Path, candidates: Sequence[Mapping[str, str]],
                  label: Path | str | None = None) -> tuple[dict[str, int], int]:
    """bos/eos/pad ids from the first of `candidates` (role -> token name) whose tokens all exist in `tokenizer`
    (a CLIP tokenizer names them <|startoftext|>/<|endoftext|>); refused, listing what was looked for, if none."""
    from tokenizers import Tokenizer

    _, size = special_token_ids(tokenizer, label, ())  # an unreadable file is refused with its message here
    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab(with_added_tokens=True)
    for names in candidates:
        if all(token in vocab for token in names.values()):
            return {role: vocab[token] for role, token in names.items()}, size
    wanted = " or ".join("/".join(names.values()) for names in candidates)
    raise MobileVLAError(f"tokenizer {label or tokenizer} has none of the special-token sets {wanted}; pass the "
                         f"tokenizer.json the policy was trained with")


def prompt_settings(tokenizer: Path, layout: str, instruction: str, max_prompt_tokens: int, vocab_size: int,
                    label: Path | str | None = None, template: str = PROMPT_TEMPLATE,
                    specials: Sequence[Mapping[str, str]] | None = None) -> PromptSettings:
    """The manifest's prompt settings, with the special-token ids read from `tokenizer` (Kosmos-2's, or the first
    complete set of `specials`); refuses a tokenizer whose ids do not fit the policy's embedding table (`vocab_size`
    rows)."""
    if specials is None:
        found, size = special_token_ids(tokenizer, label)
        ids = {role: found[token] for role, token in KOSMOS_SPECIALS.items()}
    else:
        ids, size = special_roles(tokenizer, specials, label)
    if size > vocab_size:
        raise MobileVLAError(
            f"tokenizer {label or tokenizer} has {size} tokens but the policy's embedding table has {vocab_size} "
            f"rows: it is not the tokenizer this policy was trained with. Pass the tokenizer.json of its Kosmos-2 "
            f"directory"
        )
    return PromptSettings(
        layout=layout, template=template, default_instruction=instruction,
        max_prompt_tokens=max_prompt_tokens, num_image_tokens=NUM_IMAGE_TOKENS,
        bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"], tokenizer_file=TOKENIZER_FILE,
    )


def policy_prompt(tokenizer: Path, policy: ReferencePolicy, layout: str, instruction: str, max_prompt_tokens: int,
                  label: Path | str | None = None) -> PromptSettings:
    """`prompt_settings` for `policy`, whose embedding table bounds the tokenizer's ids."""
    vocab = int(policy.backbone.text_model.model.embed_tokens.num_embeddings)
    return prompt_settings(tokenizer, layout, instruction, max_prompt_tokens, vocab, label)
