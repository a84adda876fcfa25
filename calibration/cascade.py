"""Cascade calibration data: each part is calibrated on what its upstream part really produces.

- vision: the sampled frames, read through the runtime's episode reader and preprocessing (the same uint8 frames
  the runtime feeds the vision graph);
- trunk: the upstream vision part's image embeds for those frames, with the episode's own prompt;
- head: history windows of real trunk features: for a sampled frame t, the features of frames max(0, t-W+1) .. t
  of its episode, exactly the head's input at t in the runtime (zero rows past `history_len`).

"Upstream" is the part as it will run on the device: the Q/DQ graph when it passed the gate, else FP32.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from calibration.sampling import FrameRef
from runtime.backends.base import Runner
from runtime.episodes import Episode, EpisodeInfo
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


def vision_feeds(refs: Sequence[FrameRef], frames: Mapping[Path, EpisodeFrames]) -> list[Feed]:
    return [{"frame": frames[ref.episode.path].frames[ref.index][None]} for ref in refs]


Embeds = dict[Path, dict[int, np.ndarray]]  # episode -> frame index -> image embeds (1, 64, D)


def vision_embeds(frames: Mapping[Path, EpisodeFrames], vision: Runner) -> Embeds:
    """Image embeds of every loaded frame (sampled frames and their history windows), through `vision`."""
    return {path: {index: vision.infer({"frame": pixels[None]})["image_embeds"]
                   for index, pixels in loaded.frames.items()}
            for path, loaded in frames.items()}


def trunk_feeds(refs: Sequence[FrameRef], embeds: Embeds, text: TextFeeds) -> list[Feed]:
    return [{"image_embeds": embeds[ref.episode.path][ref.index], **text.for_episode(ref.episode)} for ref in refs]


def episode_features(info: EpisodeInfo, embeds: Mapping[int, np.ndarray], trunk: Runner,
                     text: TextFeeds) -> dict[int, np.ndarray]:
    """Action features `(D,)` of one episode's loaded frames, through the upstream trunk."""
    text_feed = text.for_episode(info)
    return {index: trunk.infer({"image_embeds": value, **text_feed})["action_feature"][0]
            for index, value in embeds.items()}


def head_window(features: Mapping[int, np.ndarray], index: int, window: int) -> Feed:
    """The head's input at frame `index`: the last min(index+1, W) features, zero rows after them."""
    recent = [features[i] for i in history_indices(index, window)]
    history = np.zeros((1, window, recent[0].shape[0]), dtype=np.float32)
    history[0, : len(recent)] = recent
    return {"features": history, "history_len": np.array([len(recent)], dtype=np.int64)}


def head_feeds(refs: Sequence[FrameRef], frames: Mapping[Path, EpisodeFrames], embeds: Embeds, trunk: Runner,
               text: TextFeeds, window: int) -> list[Feed]:
    features = {path: episode_features(loaded.info, embeds[path], trunk, text) for path, loaded in frames.items()}
    return [head_window(features[ref.episode.path], ref.index, window) for ref in refs]
