"""One frame through the bundle's parts by their plan (runtime/plan.py; the history rule of docs/design.md §2.3),
then de-normalization and scaling."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from runtime.backends.base import PolicyBackend
from runtime.bundle import ActionSettings, Bundle
from runtime.prompt import PromptEncoder


@dataclass(frozen=True)
class OutputSettings:
    """Applied after de-normalization: `clip(a * scale, -limit, limit)`."""

    scale: float = 1.0
    limit: float | None = None


@dataclass
class StepResult:
    chunk: np.ndarray  # (n, d) de-normalized, scaled, limited
    raw_chunk: np.ndarray  # (n, d) the head's tanh output
    gripper_prob: np.ndarray | None  # (n,) for the actions_gripper head
    history_len: int
    timings_ms: dict[str, float]

    @property
    def velocity(self) -> np.ndarray:
        """Chunk element 0: the action for the current frame (RoboVLMs executes this one)."""
        return self.chunk[0]


def affine(action: ActionSettings, output: OutputSettings) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset) with `gain · raw + offset` = de-normalization then output scale, computed once."""
    scale = np.float32(output.scale)
    if not action.norm_action:
        return np.array(scale, dtype=np.float32), np.zeros((), dtype=np.float32)
    low = np.asarray(action.norm_min, dtype=np.float32)
    high = np.asarray(action.norm_max, dtype=np.float32)
    # (raw + 1) / 2 · (high − low) + low  =  raw · (high − low) / 2 + (high + low) / 2
    return ((high - low) / 2 * scale).astype(np.float32), ((high + low) / 2 * scale).astype(np.float32)


def apply_output(raw: np.ndarray, gain: np.ndarray, offset: np.ndarray, limit: float | None) -> np.ndarray:
    """`clip(gain · raw + offset, ±limit)` as a new float32 array."""
    values = raw * gain + offset
    if limit is not None:
        np.clip(values, -limit, limit, out=values)
    return values.astype(np.float32, copy=False)


def denormalize(raw: np.ndarray, action: ActionSettings, output: OutputSettings) -> np.ndarray:
    return apply_output(raw, *affine(action, output), output.limit)


class PolicyPipeline:
    """The encoded instruction and the backend (which holds the feature history); one `step()` per frame."""

    def __init__(
        self,
        bundle: Bundle,
        backend: PolicyBackend,
        instruction: str | None = None,
        output: OutputSettings | None = None,
        over_long: str = "reject",
    ) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.backend = backend
        self.action = manifest.action
        self.output = output or OutputSettings(manifest.action.output_scale, manifest.action.output_limit)
        self._gain, self._offset = affine(self.action, self.output)
        self.encoder = PromptEncoder(bundle.path(manifest.prompt.tokenizer_file), manifest.prompt, over_long)
        self.instruction = ""
        self.set_instruction(instruction or manifest.prompt.default_instruction)

    @property
    def frame(self) -> np.ndarray:
        """The `(S, S, C)` uint8 buffer the next `step()` reads: capture writes each frame straight into it."""
        return self.backend.frame[0]

    def set_instruction(self, instruction: str) -> None:
        """Tokenize once and hand the text inputs to the backend; every later frame reuses them."""
        self.backend.set_text(self.encoder.encode(instruction))
        self.instruction = instruction

    def reset(self) -> None:
        """Forget the history (a new episode starts from zero LSTM state)."""
        self.backend.reset()

    def step(self, frame: np.ndarray | None = None) -> StepResult:
        """Run one frame: `frame` is copied into the backend's buffer first; None runs what is already there."""
        t0 = time.perf_counter()
        if frame is not None:
            np.copyto(self.backend.frame[0], frame)
        out = self.backend.step()
        raw = out.actions.copy()
        chunk = apply_output(raw, self._gain, self._offset, self.output.limit)
        gripper = out.gripper_logits
        timings = dict(self.backend.stage_ms)
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return StepResult(
            chunk=chunk,
            raw_chunk=raw,
            gripper_prob=None if gripper is None else 1.0 / (1.0 + np.exp(-gripper)),
            history_len=out.history_len,
            timings_ms=timings,
        )
