"""Deterministic, representative frame sampling across episodes, scenarios and frame positions.

The dataset is split by episode (stratified per scenario) into a calibration pool and held-out episodes; the
accuracy gate and the demo's scoring use only held-out episodes, so no held-out frame is ever used for calibration.
From the pool, `sample_frames` picks frames round-robin over scenarios, then episodes, spreading the positions
within each episode over its whole length (start, middle, end of the drive all appear).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from runtime.episodes import EpisodeInfo
from runtime.errors import MobileVLAError, check_range


@dataclass(frozen=True)
class SampleSettings:
    frames: int = 64  # calibration frames (trunk and head inputs come from these frames' episodes)
    held_out_fraction: float = 0.25  # of each scenario's episodes, kept for the accuracy gate
    seed: int = 0

    def validate(self) -> None:
        check_range("--calibration-frames", self.frames, 1, fix="it is the number of frames sampled for calibration")
        check_range("--held-out", self.held_out_fraction, 0.0, 1.0, low_open=True, high_open=True,
                    fix="it is the fraction of each scenario's episodes kept out of calibration (default 0.25)")
        check_range("--seed", self.seed, 0)


@dataclass(frozen=True)
class DatasetSplit:
    pool: tuple[EpisodeInfo, ...]  # calibration (and, for the demo, fitting)
    held_out: tuple[EpisodeInfo, ...]  # accuracy gate and scoring only


@dataclass(frozen=True)
class FrameRef:
    episode: EpisodeInfo
    index: int


def by_scenario(episodes: tuple[EpisodeInfo, ...] | list[EpisodeInfo]) -> dict[str, list[EpisodeInfo]]:
    groups: dict[str, list[EpisodeInfo]] = defaultdict(list)
    for episode in sorted(episodes, key=lambda e: e.name):
        groups[episode.scenario].append(episode)
    return dict(sorted(groups.items()))


def split_episodes(episodes: tuple[EpisodeInfo, ...], settings: SampleSettings) -> DatasetSplit:
    """Per scenario, hold out round(fraction · count) episodes (at least one when the scenario has two or more)."""
    settings.validate()
    if len(episodes) < 2:
        raise MobileVLAError(
            f"{len(episodes)} usable episode(s): calibration and the held-out accuracy check need at least 2"
        )
    rng = np.random.default_rng(settings.seed)
    pool: list[EpisodeInfo] = []
    held: list[EpisodeInfo] = []
    for group in by_scenario(episodes).values():
        count = round(settings.held_out_fraction * len(group))
        count = min(len(group) - 1, max(1, count)) if len(group) >= 2 else 0
        order = rng.permutation(len(group))
        held += [group[i] for i in sorted(order[:count])]
        pool += [group[i] for i in sorted(order[count:])]
    if not held:  # every scenario has a single episode: hold out whole episodes across scenarios
        count = max(1, round(settings.held_out_fraction * len(pool)))
        order = rng.permutation(len(pool))
        held = [pool[i] for i in sorted(order[:count])]
        pool = [pool[i] for i in sorted(order[count:])]
    return DatasetSplit(tuple(pool), tuple(held))


def spread_positions(count: int, length: int, rng: np.random.Generator) -> list[int]:
    """`count` distinct frame indices in [0, length) covering the episode evenly, with a seeded jitter."""
    count = min(count, length)
    edges = np.linspace(0, length, count + 1)
    picks = {int(min(length - 1, np.floor(lo + rng.uniform(0, max(1e-9, hi - lo))))) for lo, hi in
             itertools.pairwise(edges)}
    return sorted(picks)


def sample_frames(pool: tuple[EpisodeInfo, ...], settings: SampleSettings) -> list[FrameRef]:
    """`settings.frames` frames from the pool, balanced over scenarios and episodes and spread within episodes."""
    settings.validate()
    available = sum(e.num_frames for e in pool)
    if available < settings.frames:
        raise MobileVLAError(
            f"the calibration pool has {available} frames in {len(pool)} episodes; {settings.frames} were asked "
            f"for. Record more episodes, lower --calibration-frames, or lower --held-out"
        )
    rng = np.random.default_rng(settings.seed + 1)
    # Frames per episode: round-robin over scenarios, then over each scenario's episodes, until enough.
    quota: dict[str, int] = {e.name: 0 for e in pool}
    cursors = {scenario: 0 for scenario in by_scenario(pool)}
    groups = by_scenario(pool)
    assigned = 0
    while assigned < settings.frames:
        for scenario, group in groups.items():
            for _ in range(len(group)):  # next episode of this scenario that still has frames
                episode = group[cursors[scenario] % len(group)]
                cursors[scenario] += 1
                if quota[episode.name] < episode.num_frames:
                    quota[episode.name] += 1
                    assigned += 1
                    break
            if assigned == settings.frames:
                break
    refs = []
    for episode in sorted(pool, key=lambda e: e.name):
        refs += [FrameRef(episode, i) for i in spread_positions(quota[episode.name], episode.num_frames, rng)]
    return refs
