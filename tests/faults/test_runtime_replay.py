"""Fault injection, recorded episodes: one damaged episode must not abort a `--score` or a replay, NaN recorded
actions must not make the scores NaN, and empty frames are no calibration or replay data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main
from runtime.episodes import scan_episodes

h5py = pytest.importorskip("h5py")


def write_episode(path: Path, frames: int = 6, nan_actions: tuple[int, ...] = (),
                  shape: tuple[int, int] = (72, 128)) -> None:
    """A small episode; images stored one gzip chunk per frame, as the recorder's files are chunked."""
    rng = np.random.default_rng(len(path.name))
    actions = rng.uniform(-1, 1, (frames, 3)).astype(np.float32)
    actions[list(nan_actions), 0] = np.nan
    with h5py.File(path, "w") as f:
        f.attrs["episode_name"] = path.stem
        images = rng.integers(0, 256, (frames, *shape, 3), dtype=np.uint8)
        chunks = (1, *shape, 3) if shape[0] and shape[1] else None
        f.create_dataset("images", data=images, chunks=chunks, compression="gzip" if chunks else None)
        f.create_dataset("actions", data=actions)


def damage_frame(path: Path, index: int) -> None:
    """Overwrite the compressed bytes of one frame's chunk: h5py then fails to read that frame only."""
    with h5py.File(path, "r") as f:
        info = f["images"].id.get_chunk_info(index)
    with path.open("r+b") as handle:
        handle.seek(info.byte_offset + 10)
        handle.write(b"\0" * 200)


@pytest.fixture
def episodes(tmp_path: Path) -> Path:
    for name in ("episode_20250808_120000_a", "episode_20250808_120100_b", "episode_20250808_120200_c"):
        write_episode(tmp_path / f"{name}.h5")
    damage_frame(tmp_path / "episode_20250808_120100_b.h5", 3)
    return tmp_path


def test_score_skips_a_damaged_episode_and_scores_the_rest(demo_bundle: Path, episodes: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "scores.json"
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{episodes}", "--score", "--precision", "fp32",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr()
    scores = json.loads(out.read_text())["fp32"]
    assert scores["frames"] == 12  # episodes a and c, whole; none of b
    assert scores["excluded_frames"] == {"episode damaged part-way (skipped whole)": 3}
    assert [s["episode"] for s in scores["skipped_episodes"]] == ["episode_20250808_120100_b"]
    assert "frame 3 cannot be read" in scores["skipped_episodes"][0]["why"]
    assert "skipped episode episode_20250808_120100_b: " in printed.out
    assert "left out: episode damaged part-way (skipped whole)" in printed.out
    assert "episode episode_20250808_120100_b skipped part-way, the replay goes on with the next one" in caplog.text


def test_replay_goes_on_past_a_damaged_episode(demo_bundle: Path, episodes: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{episodes}", "--output", "-", "--sink", "none",
                 "--control", "none"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    frames = [(r["episode"][-1], r["frame"]) for r in records]
    assert frames == [("a", i) for i in range(6)] + [("b", i) for i in range(3)] + [("c", i) for i in range(6)]


def test_nan_recorded_actions_are_left_out_and_counted(demo_bundle: Path, tmp_path: Path) -> None:
    write_episode(tmp_path / "episode_20250808_120000_a.h5", nan_actions=(1, 4))
    write_episode(tmp_path / "episode_20250808_120100_b.h5")
    out = tmp_path / "scores.json"
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{tmp_path}", "--score", "--precision", "fp32",
                 "--json", str(out)]) == 0
    scores = json.loads(out.read_text())["fp32"]
    assert scores["frames"] == 10
    assert scores["excluded_frames"] == {"recorded action not finite": 2}
    assert np.isfinite(scores["mae"]) and np.isfinite(scores["axes"]["linear_x"]["r2"])


def test_all_actions_nan_is_a_clear_error(demo_bundle: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_episode(tmp_path / "episode_20250808_120000_a.h5", frames=3, nan_actions=(0, 1, 2))
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{tmp_path}", "--score", "--precision", "fp32"]) == 2
    assert "none of its 3 frames can be scored (recorded action not finite: 3)" in capsys.readouterr().err


def test_empty_frames_are_refused_as_episodes(tmp_path: Path) -> None:
    write_episode(tmp_path / "episode_20250808_120000_empty.h5", shape=(0, 0))
    with pytest.raises(Exception, match=r"`images` has shape \(6, 0, 0, 3\): frames of 0x0 pixels hold no picture"):
        scan_episodes(tmp_path)
