"""Cascade calibration data: each part is calibrated on what its upstream parts really produce.

A part's inputs at a sampled frame are built from their sources in the bundle's plan (runtime/plan.py), exactly as
the runtime feeds them: the frame read through the runtime's episode reader and preprocessing; the episode's own
prompt; upstream outputs computed for that frame by the upstream runners; a window of real upstream features (for
a sampled frame t, those of frames max(0, t-W+1) .. t, zero rows past `history_len`). For Kosmos-2 + LSTM: vision
on the frames, the trunk on vision's embeds, the head on windows of trunk features.

"Upstream" is the part as it will run on the device: the Q/DQ graph when it passed the gate, else FP32.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from calibration.sampling import FrameRef
from runtime.backends.base import Runner
from runtime.episodes import Episode, EpisodeInfo
from runtime.plan import RunPlan
from runtime.preprocess import Preprocessing
from runtime.prompt import PromptEncoder

Feed = dict[str, np.ndarray]


class FeedReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of feeds.

    `__len__` and `set_range` are what ONNX Runtime's strided calibration (`CalibStridedMinMax`) drives: the
    calibrator then holds one chunk's intermediate outputs at a time and merges its ranges (or histograms) after
    each chunk, so calibration memory does not grow with the number of frames.
    """

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self.feeds = list(feeds)
        self._range = (0, len(self.feeds))
        self._next = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def get_next(self) -> Feed | None:
        return next(self._next, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = (start_index, end_index)
        self._next = iter(self.feeds[start_index:end_index])

    def rewind(self) -> None:
        self._next = iter(self.feeds[self._range[0]:self._range[1]])


CALIBRATION_CHUNK = 4  # feeds whose intermediate outputs are held at once (a real-size trunk: ~0.3 GB per feed)


def calibration_stride(count: int, chunk: int = CALIBRATION_CHUNK) -> int:
    """The largest stride <= `chunk` that divides `count` (ONNX Runtime's strided calibration needs a divisor)."""
    return max(size for size in range(1, min(chunk, count) + 1) if count % size == 0)


@dataclass(frozen=True)
class EpisodeFrames:
    """Prepared frames of one episode, read once: index -> the vision graph's uint8 frame."""

    info: EpisodeInfo
    frames: Mapping[int, np.ndarray]


def history_indices(index: int, window: int) -> list[int]:
    return list(range(max(0, index - window + 1), index + 1))


def load_frames(refs: Iterable[FrameRef], color: str, pre: Preprocessing, window: int) -> dict[Path, EpisodeFrames]:
    """Every frame the refs and their history windows need, per episode, each read and resized once."""
    wanted: dict[Path, set[int]] = defaultdict(set)
    infos: dict[Path, EpisodeInfo] = {}
    for ref in refs:
        wanted[ref.episode.path].update(history_indices(ref.index, window))
        infos[ref.episode.path] = ref.episode
    loaded = {}
    for path, indices in wanted.items():
        with Episode(path) as episode:
            loaded[path] = EpisodeFrames(infos[path], {i: episode.frame(i, color, pre) for i in sorted(indices)})
    return loaded


class TextFeeds:
    """The trunk's text inputs per instruction, tokenized once each."""

    def __init__(self, encoder: PromptEncoder, default_instruction: str) -> None:
        self.encoder = encoder
        self.default = default_instruction
        self._cache: dict[str, Feed] = {}

    def for_episode(self, info: EpisodeInfo) -> Feed:
        instruction = info.instruction or self.default
        if instruction not in self._cache:
            self._cache[instruction] = self.encoder.encode(instruction).feed()
        return self._cache[instruction]


Lookup = Callable[[str, int], np.ndarray]  # ("part.output", frame index) -> that value for one episode


def feed_for(plan: RunPlan, part: str, index: int, lookup: Lookup, frame: Callable[[int], np.ndarray],
             text: Feed, window: int) -> Feed:
    """Part `part`'s inputs at frame `index` of one episode, each from its source (runtime/plan.py): upstream
    outputs from `lookup`, a window as the last min(index+1, W) values left-aligned with zero rows after them."""
    feed: Feed = {}
    for link in plan.inputs_of(part):
        source = link.source
        if source.kind == "frame":
            feed[link.input] = frame(index)[None]
        elif source.kind == "text":
            feed[link.input] = text[source.tensor]
        elif source.kind == "history_len":
            feed[link.input] = np.array([len(history_indices(index, window))], dtype=np.int64)
        elif source.kind == "output":
            feed[link.input] = lookup(source.key, index)
        else:
            recent = [lookup(source.key, i)[0] for i in history_indices(index, window)]
            history = np.zeros((1, window, *recent[0].shape), dtype=np.float32)
            history[0, : len(recent)] = recent
            feed[link.input] = history
    return feed


class PlanValues:
    """Every part's outputs on a set of loaded frames, run with given runners and computed once each.

    A value is keyed by the runners of its part and of everything upstream of it, so the cascade (upstream as
    deployed) and the gate (upstream FP32) never mix. Instruction parts run once per episode; a part is run only at
    the frames something asks for (with a window: the frames of the window, which `load_frames` loaded).
    """

    def __init__(self, plan: RunPlan, frames: Mapping[Path, EpisodeFrames], text: TextFeeds, window: int) -> None:
        self.plan, self.frames, self.text, self.window = plan, frames, text, window
        self._memo: dict[tuple[object, ...], dict[str, np.ndarray]] = {}

    def feeds(self, part: str, refs: Sequence[FrameRef], runners: Mapping[str, Runner]) -> list[Feed]:
        return [self.feed(part, ref.episode.path, ref.index, runners) for ref in refs]

    def feed(self, part: str, path: Path, index: int, runners: Mapping[str, Runner]) -> Feed:
        loaded = self.frames[path]

        def lookup(key: str, at: int) -> np.ndarray:
            producer, _, tensor = key.partition(".")
            return self.outputs(producer, path, at, runners)[tensor]

        return feed_for(self.plan, part, index, lookup, lambda i: loaded.frames[i],
                        self.text.for_episode(loaded.info), self.window)

    def outputs(self, part: str, path: Path, index: int, runners: Mapping[str, Runner]) -> dict[str, np.ndarray]:
        if self.plan.spec(part).cadence == "instruction":
            index = -1  # once per episode's instruction
        used = sorted(self.plan.upstream(part) | {part})
        key = (part, path, index, *(id(runners[name]) for name in used))
        if key not in self._memo:
            self._memo[key] = runners[part].infer(self.feed(part, path, max(index, 0), runners))
        return self._memo[key]
