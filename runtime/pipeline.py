"""One frame through vision -> trunk -> head with the history rule (DESIGN §2.3), then de-normalization/scaling."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from runtime.bundle import ActionSettings, Bundle
from runtime.prompt import PromptEncoder
from runtime.runners import OnnxRuntimeRunner, Runner

STAGES = ("vision", "trunk", "head", "total")


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


def denormalize(raw: np.ndarray, action: ActionSettings, output: OutputSettings) -> np.ndarray:
    values = raw
    if action.norm_action:
        low = np.asarray(action.norm_min, dtype=np.float32)
        high = np.asarray(action.norm_max, dtype=np.float32)
        values = (values + 1.0) / 2.0 * (high - low) + low
    values = values * np.float32(output.scale)
    if output.limit is not None:
        values = np.clip(values, -output.limit, output.limit)
    return values.astype(np.float32, copy=False)


def onnx_runners(bundle: Bundle, threads: int = 0, precision: str = "fp32") -> dict[str, Runner]:
    """ONNX Runtime runners; `int8` runs the Q/DQ graph of each part whose precision is int8, FP32 elsewhere."""
    return {
        name: OnnxRuntimeRunner(bundle.part_path(name, precision), entry.spec, threads=threads)
        for name, entry in bundle.manifest.parts.items()
    }


class PolicyPipeline:
    """Holds the activated runners, the encoded instruction and the feature history."""

    def __init__(
        self,
        bundle: Bundle,
        runners: Mapping[str, Runner],
        instruction: str | None = None,
        output: OutputSettings | None = None,
    ) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.runners = runners
        self.action = manifest.action
        self.output = output or OutputSettings(manifest.action.output_scale, manifest.action.output_limit)
        self.encoder = PromptEncoder(bundle.path(manifest.prompt.tokenizer_file), manifest.prompt)
        self.window = manifest.policy.window
        self._history = np.zeros((1, self.window, manifest.policy.text_dim), dtype=np.float32)
        self._history_len = np.zeros((1,), dtype=np.int64)  # frames in the window: the head's input, kept in place
        # Feeds built once and updated in place: the head's arrays never move, the trunk's text side changes only
        # with the instruction, and each frame only swaps in its image embeds.
        self._head_feed: dict[str, np.ndarray] = {"features": self._history, "history_len": self._history_len}
        self._trunk_feed: dict[str, np.ndarray] = {}
        self.instruction = ""
        self.set_instruction(instruction or manifest.prompt.default_instruction)

    def set_instruction(self, instruction: str) -> None:
        """Tokenize once; every later frame reuses the arrays."""
        self._trunk_feed = self.encoder.encode(instruction).feed()
        self.instruction = instruction

    def reset(self) -> None:
        """Forget the history (a new episode starts from zero LSTM state)."""
        self._history_len[0] = 0
        self._history[...] = 0.0

    def _push_feature(self, feature: np.ndarray) -> None:
        count = int(self._history_len[0])
        if count < self.window:
            self._history[0, count] = feature[0]
            self._history_len[0] = count + 1
        else:
            self._history[0, :-1] = self._history[0, 1:]
            self._history[0, -1] = feature[0]

    def step(self, frame: np.ndarray) -> StepResult:
        t0 = time.perf_counter()
        embeds = self.runners["vision"].infer({"frame": frame[None]})["image_embeds"]
        t1 = time.perf_counter()
        self._trunk_feed["image_embeds"] = embeds
        feature = self.runners["trunk"].infer(self._trunk_feed)["action_feature"]
        t2 = time.perf_counter()
        self._push_feature(feature)
        head = self.runners["head"].infer(self._head_feed)
        t3 = time.perf_counter()
        raw = head["actions"][0]
        gripper = head.get("gripper_logits")
        return StepResult(
            chunk=denormalize(raw, self.action, self.output),
            raw_chunk=raw,
            gripper_prob=None if gripper is None else 1.0 / (1.0 + np.exp(-gripper[0])),
            history_len=int(self._history_len[0]),
            timings_ms={
                "vision": (t1 - t0) * 1e3,
                "trunk": (t2 - t1) * 1e3,
                "head": (t3 - t2) * 1e3,
                "total": (t3 - t0) * 1e3,
            },
        )
