"""The adapter interface (docs/adapters.md): what `build_engines` needs to know of a policy family.

An adapter declares the family's parts (a torch module each, with its fixed input/output spec, its cadence and
where each input comes from: runtime/plan.py), how to load the team's checkpoint into them, the reference forward
the exported parts are checked against, and a checkpoint writer for the demo and the tests. Everything else
(export, parity, calibration, INT8 and FP16 gates, device graphs, the runtime) is generic over the parts.

A team's own family is one file: a subclass of `PolicyAdapter`, passed as `--policy path/to/file.py:ClassName`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from build_engines.checkpoint import ImportedPolicy
from runtime.bundle import PolicySettings
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.prompt import PROMPT_TEMPLATE, PromptSettings
from runtime.specs import PartSpec

Reference = list[dict[str, Tensor]]  # per frame: "part.output" -> the reference's value (batch 1)


@dataclass(frozen=True)
class ExportPart:
    """One part: `module(*inputs in spec order)` returns its outputs in spec order (a tensor or a tuple)."""

    module: nn.Module
    spec: PartSpec

    @property
    def name(self) -> str:
        return self.spec.name


class PolicyAdapter(ABC):
    """A policy family. Subclasses set `family` and implement the abstract methods; `options` are the
    `--policy-option KEY=VALUE` pairs, checked against `OPTIONS` (name -> what it means)."""

    family: ClassVar[str]
    summary: ClassVar[str] = ""
    OPTIONS: ClassVar[Mapping[str, str]] = {}
    # The prompt layout the family's text part reads (runtime/prompt.py); None: `--layout` (Kosmos-2's trunk).
    prompt_layout: ClassVar[str | None] = None
    prompt_template: ClassVar[str] = PROMPT_TEMPLATE
    # The tokenizer's bos/eos/pad tokens: None, Kosmos-2's (<s>, </s>, <pad>, and <grounding> for its template);
    # else candidate sets (role -> token), the first one complete in the tokenizer is used.
    special_tokens: ClassVar[tuple[Mapping[str, str], ...] | None] = None

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.OPTIONS))
        if unknown:
            known = ", ".join(f"{k} ({v})" for k, v in self.OPTIONS.items()) or "none"
            raise MobileVLAError(f"--policy-option {unknown[0]} is not an option of the {self.family} family; its "
                                 f"options: {known}")

    def option(self, name: str, default: str) -> str:
        return self.options.get(name, default)

    # weights

    @abstractmethod
    def random_policy(self, preset: str, seed: int) -> ImportedPolicy:
        """Seeded random weights at a preset's shapes (`--random-weights`; the tests' policies)."""

    @abstractmethod
    def import_checkpoint(self, checkpoint: Path, config: Path, backbone_dir: Path | None,
                          preset: str) -> ImportedPolicy:
        """The team's checkpoint and training config (and the local backbone directory) -> the reference model,
        with MobileVLAError naming missing, unexpected, mis-shaped or non-finite tensors."""

    @abstractmethod
    def write_checkpoint(self, imported: ImportedPolicy, checkpoint: Path, config: Path, seed: int) -> None:
        """Write `imported` as the team's training would, so `import_checkpoint` gives it back (demo and tests)."""

    # shapes and parts

    @abstractmethod
    def vocab_size(self, model: nn.Module) -> int:
        """Rows of the text embedding table: the tokenizer's ids must fit."""

    @abstractmethod
    def policy_settings(self, model: nn.Module) -> PolicySettings:
        """The manifest's `policy` (chunk, window, action_dim, head variant, ...); `family` is filled in here."""

    @abstractmethod
    def parts(self, model: nn.Module, pre: Preprocessing, prompt: PromptSettings) -> list[ExportPart]:
        """The parts in run order. The last one outputs `actions` (1, chunk, d) (+ `gripper_logits`)."""

    @abstractmethod
    def reference(self, model: nn.Module, frames: Sequence[np.ndarray], prompt_ids: Sequence[int],
                  prompt: PromptSettings, pre: Preprocessing) -> Reference:
        """The family's own forward over one episode's uint8 frames, written independently of the export
        (variable-length sequences, no padding): every part's outputs per frame, keyed "part.output"."""

    def settings(self, model: nn.Module) -> PolicySettings:
        return replace(self.policy_settings(model), family=self.family)

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "options": self.options}
