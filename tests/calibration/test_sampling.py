"""Sampling, synthetic episodes and the preprocessing parity between calibration and the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.cascade import feed_for, load_frames
from calibration.sampling import SampleSettings, sample_frames, split_episodes
from runtime.episodes import EpisodeInfo, scan_episodes
from runtime.errors import MobileVLAError
from runtime.plan import run_plan
from runtime.preprocess import Preprocessing
from runtime.sources.replay import replay_frames
from runtime.sources.spec import H5Spec
from runtime.specs import PartDims, part_specs

pytest.importorskip("h5py")


def infos(counts: dict[str, int], frames: int = 18) -> tuple[EpisodeInfo, ...]:
    return tuple(EpisodeInfo(Path(f"{s}{i}.h5"), f"episode_20250808_1200{i:02d}_{s}", s, frames, (720, 1280), None,
                             True) for s, n in counts.items() for i in range(n))


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    episodes = infos({"1box_vert_left": 8, "1box_vert_right": 8, "2box_vert_left": 4})
    split = split_episodes(episodes, SampleSettings(held_out_fraction=0.25))
    assert split == split_episodes(episodes, SampleSettings(held_out_fraction=0.25))
    held = [e.scenario for e in split.held_out]
    assert (held.count("1box_vert_left"), held.count("1box_vert_right"), held.count("2box_vert_left")) == (2, 2, 1)
    assert not {e.name for e in split.pool} & {e.name for e in split.held_out}


def test_sample_balances_scenarios_and_spreads_positions() -> None:
    pool = infos({"a": 3, "b": 1})
    refs = sample_frames(pool, SampleSettings(frames=24))
    assert len(refs) == 24 and len({(r.episode.name, r.index) for r in refs}) == 24
    by_scenario = [r.episode.scenario for r in refs]
    assert by_scenario.count("a") == 12 and by_scenario.count("b") == 12
    positions = sorted(r.index for r in refs if r.episode.scenario == "b")
    assert positions[0] < 3 and positions[-1] > 14  # start and end of the drive both sampled
    assert refs == sample_frames(pool, SampleSettings(frames=24))


def test_too_few_frames_or_episodes_is_a_clear_error() -> None:
    with pytest.raises(MobileVLAError, match="the calibration pool has 36 frames in 2 episodes; 64 were asked"):
        sample_frames(infos({"a": 2}), SampleSettings(frames=64))
    with pytest.raises(MobileVLAError, match="need at least 2"):
        split_episodes(infos({"a": 1}), SampleSettings())


def test_calibration_sees_exactly_the_frames_the_runtime_feeds(demo_episodes: Path) -> None:
    """Issue 3 item 3: one preprocessing definition for calibration and runtime replay of the same episode."""
    pre = Preprocessing(resize="bicubic", color_order="bgr")
    info = scan_episodes(demo_episodes).episodes[0]
    refs = sample_frames((info,), SampleSettings(frames=6))
    calibration = load_frames(refs, "bgr", pre, window=1)[info.path].frames
    replay = {f.index: f.pixels for f in replay_frames(H5Spec(info.path, f"h5:{info.path}"), pre, None, h5_color="bgr")}
    assert len(calibration) == 6
    for index, pixels in calibration.items():
        assert pixels.dtype == np.uint8 and pixels.shape == (224, 224, 4)
        np.testing.assert_array_equal(pixels, replay[index])


def head_window(features: dict[int, np.ndarray], index: int, window: int) -> dict[str, np.ndarray]:
    specs = part_specs(PartDims(224, 4, 64, 4, 99, window, 10, 2, "velocities"))
    plan = run_plan(tuple(specs.values()), window)
    return feed_for(plan, "head", index, lambda key, i: features[i][None], lambda i: np.zeros(0), {}, window)


def test_head_window_matches_the_runtime_history_rule() -> None:
    features = {i: np.full(4, float(i), np.float32) for i in range(12)}
    early = head_window(features, 2, window=8)
    assert early["history_len"].tolist() == [3]
    np.testing.assert_array_equal(early["features"][0, :3, 0], [0, 1, 2])
    assert not early["features"][0, 3:].any()
    late = head_window(features, 11, window=8)
    np.testing.assert_array_equal(late["features"][0, :, 0], np.arange(4, 12))
