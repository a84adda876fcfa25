"""`--output` is replaced only when it is a bundle or empty; leftovers of dead builds are cleaned; Ctrl-C is clean.

Every refusal is checked on the real CLI with the files a user would lose: they must all still be there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from build_engines.cli import main as build_main
from runtime.bundle import load_bundle, sha256_file
from tests.faults.test_build_inputs import Run, refused, write_run

INTERRUPTED_LINE = "build_engines: interrupted; no bundle was written and --output is unchanged"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return write_run(tmp_path_factory.mktemp("run1"))


@pytest.fixture(scope="module")
def bundle(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle built into an existing empty directory (which is allowed)."""
    output = tmp_path_factory.mktemp("built") / "bundle"
    output.mkdir()
    assert build_main(run.argv(output)) == 0
    return output


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256): what a refused build must leave exactly as it was."""
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def test_output_holding_the_inputs_is_refused_and_nothing_is_lost(run: Run,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run.directory)
    message = refused(run.argv(run.directory), capsys)
    assert f"--output {run.directory} holds this build's input --checkpoint {run.checkpoint}" in message
    assert "Keep the inputs outside the bundle directory: pass another --output" in message
    assert snapshot(run.directory) == before
    assert sorted(before) == ["tokenizer.json", "train.log", "x.ckpt", "x.json"]


def test_output_dot_and_its_parents_are_refused(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.md").write_text("my notes")
    monkeypatch.chdir(work)
    for output in (Path("."), tmp_path):
        message = refused(run.argv(output), capsys)
        assert f"--output {output} is the current directory or holds it" in message
        assert "build_engines replaces the whole --output directory" in message
    assert (work / "notes.md").read_text() == "my notes"


def test_regular_file_is_refused_and_kept(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bundle"
    target.write_text("not a directory")
    message = refused(run.argv(target), capsys)
    assert f"--output {target} is a file, not a directory" in message
    assert f"pass a new directory, e.g. --output {target}-bundle" in message
    assert target.read_text() == "not a directory"


@pytest.mark.parametrize("manifest", [None, "{not json", '{"format_version": 1}'])
def test_directory_that_is_not_a_bundle_is_refused_and_kept(run: Run, tmp_path: Path, manifest: str | None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "results"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    if manifest is not None:
        (target / "manifest.json").write_text(manifest)
    before = snapshot(target)
    message = refused(run.argv(target), capsys)
    assert f"--output {target} is not a bundle (no valid manifest.json) and holds" in message
    assert "notes.txt, sub" in message and f"Pass a new directory, e.g. --output {target / 'bundle'}" in message
    assert snapshot(target) == before


def test_symbolic_link_is_refused(run: Run, tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "link"
    link.symlink_to(bundle)
    message = refused(run.argv(link), capsys)
    assert f"--output {link} is a symbolic link (to {bundle})" in message
    assert link.is_symlink()


def test_bundle_holding_a_user_file_is_refused(run: Run, tmp_path: Path, bundle: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    (target / "field-notes.txt").write_text("robot drifted left")
    before = snapshot(target)
    message = refused(run.argv(target), capsys)
    assert f"--output {target} is a bundle that also holds files of yours: 1 entries (field-notes.txt)" in message
    assert "Move them out of the bundle directory, or pass another --output" in message
    assert snapshot(target) == before


def test_input_inside_the_bundle_is_refused(run: Run, tmp_path: Path, bundle: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    message = refused(run.argv(target, tokenizer=target / "tokenizer.json"), capsys)
    assert f"holds this build's input --tokenizer {target / 'tokenizer.json'}" in message


@pytest.fixture
def live_pid() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "120"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()  # reaped: the pid no longer exists
    return process.pid


def test_rebuild_replaces_a_bundle_and_removes_leftovers_of_dead_builds(
        run: Run, tmp_path: Path, bundle: Path, live_pid: int, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    dead = dead_pid()
    stale = [tmp_path / f".bundle.staging-{dead}", tmp_path / f".bundle.old-{dead}",
             temp / f"mobile-vla-build-{dead}-q1w2e3r4"]
    kept = [tmp_path / f".bundle.staging-{live_pid}", temp / f"mobile-vla-build-{live_pid}-a1s2d3f4",
            tmp_path / f".other.staging-{dead}", temp / "mobile-vla-build-legacy0"]
    for path in stale + kept:
        path.mkdir()
        (path / "half.onnx").write_bytes(b"partial")
    assert build_main(run.argv(target)) == 0
    assert [p for p in stale if p.exists()] == []
    assert all(p.is_dir() for p in kept)
    own = f"{os.getpid()}"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(f"-{own}")]
    assert not list(temp.glob(f"mobile-vla-build-{own}-*"))
    manifest = load_bundle(target).manifest
    assert manifest.source["tokenizer"] == str(run.tokenizer)
    assert manifest.source["tokenizer_sha256"] == sha256_file(run.tokenizer)


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_sigint_mid_build_exits_130_with_one_line_and_leaves_nothing(run: Run, tmp_path: Path,
                                                                     bundle: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    before = snapshot(target)
    argv = run.argv(target)
    argv[argv.index("--parity-frames") + 1] = "1000"  # a build that is still running when Ctrl-C comes
    env = {**os.environ, "TMPDIR": str(temp)}
    process = subprocess.Popen([sys.executable, "-m", "build_engines", *argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / f".bundle.staging-{process.pid}"
    try:
        assert wait_for(lambda: (staging / "trunk.onnx").is_file(), 120), "the build never reached the export"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == INTERRUPTED_LINE
    assert [line for line in err.splitlines() if line.startswith("build_engines:")] == [INTERRUPTED_LINE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "tmp"]  # no staging or retired directory
    assert not list(temp.glob("mobile-vla-build-*"))
    assert snapshot(target) == before
