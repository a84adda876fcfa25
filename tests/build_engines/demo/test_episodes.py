"""`build_engines/demo/episodes.py`: synthetic episodes in exactly the robot's HDF5 format, with actions that
follow the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from build_engines.demo.episodes import SyntheticSpec, generate_episodes, instruction_for
from runtime.episodes import Episode

pytest.importorskip("h5py")


def test_synthetic_episodes_have_the_robot_format_and_image_dependent_actions(tmp_path: Path) -> None:
    paths = generate_episodes(tmp_path, SyntheticSpec(episodes_per_scenario=1, frames=6, height=72, width=128))
    assert len(paths) == 4
    with Episode(paths[0], require_actions=True) as episode:
        assert episode.frame_shape == (72, 128) and episode.num_frames == 6
        assert episode.instruction == instruction_for(episode.scenario)
        actions = episode.actions(3)
    left = next(p for p in paths if p.stem.endswith("_left"))
    right = next(p for p in paths if p.stem.endswith("_right"))
    with Episode(left) as a, Episode(right) as b:
        assert a.actions(2)[:, 1].mean() > 0.1 > -0.1 > b.actions(2)[:, 1].mean()  # steer to the scenario's side
    assert actions[:, 2].max() == 0.0 and np.ptp(actions[:, 0]) > 0.1
