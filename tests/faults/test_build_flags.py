"""Numeric build flags out of range (negative, zero where meaningless, NaN, inf) are refused naming the flag, and
no episode is ever generated into a directory the user named."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_engines.cli import main as build_main
from runtime.paths import EPISODES_ENV
from tests.build_engines.test_checkpoint import edit_config
from tests.faults.test_build_inputs import Run, refused, write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return write_run(tmp_path_factory.mktemp("run1"))


@pytest.fixture
def demo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the demo would generate its synthetic episodes: must stay untouched by a refused build."""
    cache = tmp_path / "cache-episodes"
    monkeypatch.setenv(EPISODES_ENV, str(cache))
    return cache


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--max-prompt-tokens", "100000", "--max-prompt-tokens 100000 is out of range: it must be <= 512"),
    ("--max-prompt-tokens", "0", "--max-prompt-tokens 0 is out of range: it must be >= 1"),
    ("--calibration-frames", "0", "--calibration-frames 0 is out of range: it must be >= 1"),
    ("--calibration-frames", "-5", "--calibration-frames -5 is out of range: it must be >= 1"),
    ("--held-out", "nan", "--held-out nan is out of range: it is not a finite number"),
    ("--held-out", "0", "--held-out 0.0 is out of range: it must be > 0"),
    ("--held-out", "1", "--held-out 1.0 is out of range: it must be < 1"),
    ("--parity-frames", "0", "--parity-frames 0 is out of range: it must be >= 1"),
    ("--parity-frames", "-3", "--parity-frames -3 is out of range: it must be >= 1"),
    ("--parity-tolerance", "nan", "--parity-tolerance nan is out of range: it is not a finite number"),
    ("--parity-tolerance", "inf", "--parity-tolerance inf is out of range: it is not a finite number"),
    ("--parity-tolerance", "-1", "--parity-tolerance -1.0 is out of range: it must be > 0"),
    ("--parity-tolerance", "0", "--parity-tolerance 0.0 is out of range: it must be > 0"),
    ("--gate-mae", "inf", "--gate-mae inf is out of range: it is not a finite number"),
    ("--gate-mae", "0", "--gate-mae 0.0 is out of range: it must be > 0"),
    ("--gate-sign", "0", "--gate-sign 0.0 is out of range: it must be > 0"),
    ("--gate-sign", "1.5", "--gate-sign 1.5 is out of range: it must be <= 1"),
    ("--gate-cosine", "nan", "--gate-cosine nan is out of range: it is not a finite number"),
    ("--gate-cosine", "-0.5", "--gate-cosine -0.5 is out of range: it must be > 0"),
    ("--workspace-mb", "0", "--workspace-mb 0 is out of range: it must be >= 1"),
    ("--workspace-mb", "-1", "--workspace-mb -1 is out of range: it must be >= 1"),
    ("--seed", "-1", "--seed -1 is out of range: it must be >= 0"),
])
def test_out_of_range_flags_are_refused_naming_the_flag(flag: str, value: str, words: str, tmp_path: Path,
                                                        demo_cache: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    message = refused(["--output", str(tmp_path / "out"), f"{flag}={value}"], capsys)
    assert words in message
    assert not (tmp_path / "out").exists() and not demo_cache.exists()


def test_engines_only_checks_the_workspace_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = refused(["--engines-only", "--bundle", str(tmp_path), "--workspace-mb", "-64"], capsys)
    assert "--workspace-mb -64 is out of range: it must be >= 1" in message


def test_the_prompt_bound_is_explained_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "at most 512: the trunk runs at this padded length every frame" in text


@pytest.mark.parametrize("content", ["empty", "text-only", "absent"])
def test_demo_never_generates_episodes_into_a_user_directory(content: str, tmp_path: Path, demo_cache: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "my-episodes"
    if content != "absent":
        data.mkdir()
    if content == "text-only":
        (data / "README.txt").write_text("episodes go here")
    message = refused(["--output", str(tmp_path / "out"), "--calibration-data", str(data)], capsys)
    if content == "absent":
        assert f"--calibration-data {data} does not exist" in message
        assert not data.exists()
    else:
        assert f"--calibration-data {data} holds no .h5/.hdf5 episode files" in message
        assert "Synthetic episodes are only for the demo" in message
        assert sorted(p.name for p in data.iterdir()) == ([] if content == "empty" else ["README.txt"])
    assert not demo_cache.exists() and not (tmp_path / "out").exists()


def test_int8_with_an_episode_less_training_data_dir(run: Run, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train-data"
    data.mkdir()
    config = edit_config(run.config, tmp_path / "c.json", train_dataset={"data_dir": str(data)})
    message = refused(run.argv(tmp_path / "out", "--int8", config=config), capsys)
    assert f"train_dataset.data_dir of the training config: {data} holds no .h5/.hdf5 episode files" in message
    assert list(data.iterdir()) == [] and not (tmp_path / "out").exists()
