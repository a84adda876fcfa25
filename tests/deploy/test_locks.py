"""The locks in requirements/ (`make lock`): complete for what each install asks, every pin hashed and inside
pyproject.toml's ranges, and used by every install path (make, install.sh, Dockerfile.l4t)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import INT8_BY_CONSTRUCTION

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {  # lock -> the extras it must cover (with what they pull in)
    "requirements/dev.txt": ("export", "replay", "dds", "dev"),
    "requirements/runtime-test.txt": ("replay", "capture", "serial", "dds", "test"),
    "requirements/robot.txt": ("replay", "capture", "serial", "jetson"),
}


def lock_module() -> ModuleType:
    """requirements/moved.py (a script beside the locks, not a package): its lock parser."""
    spec = importlib.util.spec_from_file_location("lock_moved", ROOT / "requirements" / "moved.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MOVED = lock_module()


def wanted(extras: tuple[str, ...]) -> list[str]:
    """The requirement strings of the base dependencies and `extras`, the project's own extras expanded."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional, out, todo, seen = project["optional-dependencies"], list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            nested = re.match(r"mobile-vla-edge\[([^\]]+)\]", requirement)
            if nested:
                todo += nested.group(1).split(",")
            else:
                out.append(requirement)
    return out


@pytest.mark.parametrize("lock", list(LOCKS))
def test_the_lock_pins_every_requirement_inside_its_range_with_hashes(lock: str) -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = MOVED.lock_entries(ROOT / lock)
    assert pins, f"{lock} holds no pin: run make lock"
    unhashed = [name for name, lines in pins.items() if any(count == 0 for _, count in lines)]
    assert not unhashed, f"{lock}: pins without a hash: {unhashed}"
    assert "setuptools" in pins  # the build backend: installs build the project with --no-build-isolation
    for text in wanted(LOCKS[lock]):
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = MOVED.canonical(requirement.name)
        assert name in pins, f"{lock} does not pin {name} ({text}): run make lock"
        for version, _ in pins[name]:
            assert requirement.specifier.contains(Version(version), prereleases=True), (lock, text, version)
    if lock != "requirements/robot.txt":
        assert "torch" not in pins or pins["torch"][0][0] == "2.13.0+cpu"  # the CPU build, never a CUDA one
    else:
        assert not {"torch", "transformers", "onnx"} & pins.keys()  # the robot's install stays lean


def test_every_install_path_installs_from_a_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for lock in ("$(FULL_LOCK)", "$(LEAN_LOCK)"):
        assert f"pip install -q --require-hashes --no-deps -r {lock}" in makefile
    assert "FULL_LOCK := requirements/dev.txt" in makefile and "LEAN_LOCK := requirements/runtime-test.txt" in makefile
    install = (ROOT / "install.sh").read_text()
    assert 'pip install -q --require-hashes --no-deps -r "$SRC/$LOCK"' in install
    assert "LOCK=requirements/robot.txt" in install and "CUDA_LOCK=requirements/robot-cuda.txt" in install
    docker = (ROOT / "Dockerfile.l4t").read_text()
    for lock in ("requirements/robot.txt", "requirements/robot-cuda.txt"):
        assert f"pip install --require-hashes --no-deps -r {lock}" in docker
        assert (ROOT / lock).is_file()
    for text in (makefile, install, docker):  # the project itself never resolves its dependencies again
        assert "--no-deps --no-build-isolation" in text


def test_the_test_bundle_flags_match_the_fixture() -> None:
    """make lean-test builds the shared test bundle with the same wide gates as tests/conftest.py's fixture."""
    line = re.search(r"^INT8_BY_CONSTRUCTION := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert line is not None
    flags = dict(zip(line.group(1).split()[::2], map(float, line.group(1).split()[1::2]), strict=True))
    assert flags == {"--gate-mae": INT8_BY_CONSTRUCTION["mae"], "--gate-sign": INT8_BY_CONSTRUCTION["sign_agreement"],
                     "--gate-cosine": INT8_BY_CONSTRUCTION["cosine"]}
