"""The HDF5 episode reader: lazy reads, optional fields, and a message naming the file for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.episodes import Episode, iter_episode_frames, scan_episodes, scenario_of
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing, prepare_frame

h5py = pytest.importorskip("h5py")


def write(path: Path, frames: int = 10, shape: tuple[int, ...] = (48, 64, 3), dtype: str = "uint8",
          actions: int | None = None, instruction: str | None = "go left", name: str | None = None) -> Path:
    rng = np.random.default_rng(len(path.name))
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rng.integers(0, 256, (frames, *shape)).astype(dtype))
        if actions is not None:
            f.create_dataset("actions", data=rng.uniform(-1, 1, (actions, 3)).astype(np.float32))
        if instruction is not None:
            f.create_dataset("language_instruction", data=instruction, dtype=h5py.string_dtype("utf-8"))
        if name is not None:
            f.attrs["episode_name"] = name
    return path


def test_reads_frames_lazily_through_the_one_preprocessing(tmp_path: Path) -> None:
    path = write(tmp_path / "e.h5", actions=10, name="episode_20250808_123136_1box_vert_left")
    pre = Preprocessing()
    with Episode(path, require_actions=True) as episode:
        assert (episode.name, episode.scenario, episode.instruction) == (
            "episode_20250808_123136_1box_vert_left", "1box_vert_left", "go left")
        assert episode.num_frames == 10 and episode.frame_shape == (48, 64)
        np.testing.assert_array_equal(episode.frame(3, "bgr", pre), prepare_frame(episode.image(3), "bgr", pre))
        assert episode.actions(2).shape == (10, 2)
    items = list(iter_episode_frames(scan_episodes(tmp_path).episodes[0], "bgr", pre, indices=[1, 4]))
    assert [i.index for i in items] == [1, 4] and items[0].pixels.shape == (224, 224, 4)


def test_optional_fields_absent(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.h5", instruction=None)
    with Episode(path) as episode:
        assert episode.instruction is None and not episode.has_actions and episode.name == "plain"
    assert scenario_of("plain") == "plain"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float32"}, "`images` has dtype float32; expected uint8"),
        ({"shape": (48, 64)}, "`images` has shape (10, 48, 64); expected (N, H, W, 3)"),
        ({"actions": 7}, "`actions` has 7 rows for 10 images"),
        ({"actions": None}, "no `actions` dataset"),
    ],
)
def test_bad_episodes_name_the_file_and_the_fault(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"actions": 10, **kwargs}
    path = write(tmp_path / "bad.h5", **args)  # type: ignore[arg-type]
    with pytest.raises(MobileVLAError, match=r"bad\.h5") as caught:
        Episode(path, require_actions=True)
    assert message in str(caught.value)


def test_missing_images_not_hdf5_and_truncated(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "noimages.h5", "w") as f:
        f.create_dataset("actions", data=np.zeros((3, 3), np.float32))
    with pytest.raises(MobileVLAError, match=r"noimages\.h5: no `images` dataset"):
        Episode(tmp_path / "noimages.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(MobileVLAError, match=r"text\.h5 is not a readable HDF5 episode"):
        Episode(tmp_path / "text.h5")
    whole = write(tmp_path / "whole.h5", frames=20).read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MobileVLAError, match=r"cut\.h5"):
        with Episode(tmp_path / "cut.h5") as episode:
            episode.image(19)


def test_scan_skips_bad_and_short_episodes_with_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "good.h5", frames=10, actions=10)
    write(tmp_path / "short.h5", frames=4, actions=4)
    (tmp_path / "junk.h5").write_text("x")
    scan = scan_episodes(tmp_path, require_actions=True, min_frames=8)
    assert [e.path.name for e in scan.episodes] == ["good.h5"]
    reasons = dict((p.name, r) for p, r in scan.skipped)
    assert "4 frames, shorter than the 8" in reasons["short.h5"] and "not a readable HDF5" in reasons["junk.h5"]
    assert "skipping episode" in caplog.text


def test_empty_or_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(MobileVLAError, match=r"holds no \.h5/\.hdf5 episode files"):
        scan_episodes(tmp_path)
    with pytest.raises(MobileVLAError, match=r"does not exist"):
        scan_episodes(tmp_path / "nowhere")
    (tmp_path / "junk.h5").write_text("x")
    with pytest.raises(MobileVLAError, match=r"no usable episode under .* \(1 refused\)"):
        scan_episodes(tmp_path)
