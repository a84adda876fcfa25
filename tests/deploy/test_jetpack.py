"""JetPack 6 and 7: install.sh's release detection on fake /etc trees, the apt package names it picks per release
against the Ubuntu package index (as read when this was written: no network here), and that docs/jetson.md,
docs/deployment.md and Dockerfile.l4t say the same as install.sh. Nothing here needs a Jetson, root or Docker."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "install.sh"
DOCKERFILE = ROOT / "Dockerfile.l4t"
JETSON_DOC = ROOT / "docs/jetson.md"
DEPLOYMENT_DOC = ROOT / "docs/deployment.md"

# The first line of /etc/nv_tegra_release as L4T writes it, and /etc/os-release's VERSION_ID.
RELEASES = {
    "jp6": ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 "
            "01:49:37 UTC 2025", "22.04"),
    "jp7-thor": ("# R38 (release), REVISION: 2.1, GCID: 42000000, BOARD: generic, EABI: aarch64, DATE: Mon Sep  1 "
                 "00:00:00 UTC 2025", "24.04"),
    "jp7-orin": ("# R39 (release), REVISION: 2.0, GCID: 43000000, BOARD: generic, EABI: aarch64, DATE: Mon Jun  1 "
                 "00:00:00 UTC 2026", "24.04"),
    "jp5": ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 "
            "19:57:35 UTC 2023", "20.04"),
    "r36-on-24.04": ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x",
                     "24.04"),
}

# What packages.ubuntu.com listed for each release (arm64 or all architectures), read page by page when this was
# written. It is a record of that reading, not a live check: a name that disappears from an archive later is found
# by `apt-get install` on the device. Pages read: libgirepository1.0-dev (jammy 1.72.0-1; on noble its source
# gobject-introspection 1.80.1-1 and libgirepository-1.0-1 are listed, and installers report `apt-cache show` finding
# it), libgirepository-2.0-dev (noble 2.80.0-6ubuntu1, universe; no jammy suite: GLib 2.72 there), libglib2.0-dev
# (jammy 2.72.4, noble 2.80.0), libcairo2-dev (noble 1.18.0, jammy listed), python3-venv (noble 3.12.3, jammy listed),
# python3.12-dev (noble), pkg-config (noble: transitional to pkgconf, jammy listed), gstreamer1.0-plugins-good (noble
# 1.24.2, jammy listed), gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0 (noble, as python3-gst-1.0's
# dependencies), python3-gi (jammy 3.42.1, noble 3.48.2). Not opened, taken from the archive's standard sets:
# build-essential, python3-dev, gstreamer1.0-tools, gstreamer1.0-plugins-base (jammy and noble both build them).
UBUNTU_PACKAGES = {
    "22.04": {
        "python3-venv", "python3-dev", "build-essential", "pkg-config", "libgirepository1.0-dev", "libcairo2-dev",
        "libglib2.0-dev", "gstreamer1.0-tools", "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good",
        "gir1.2-gstreamer-1.0", "gir1.2-gst-plugins-base-1.0", "python3-gi",
    },
    "24.04": {
        "python3-venv", "python3-dev", "build-essential", "pkg-config", "libgirepository1.0-dev",
        "libgirepository-2.0-dev", "libcairo2-dev", "libglib2.0-dev", "gstreamer1.0-tools",
        "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good", "gir1.2-gstreamer-1.0",
        "gir1.2-gst-plugins-base-1.0", "python3-gi",
    },
}
NOT_IN_UBUNTU = {"22.04": {"libgirepository-2.0-dev"}, "24.04": set()}
UBUNTU_OF = {"6": "22.04", "7": "24.04"}
PYTHON_OF = {"6": "3.10", "7": "3.12"}


def fake_root(tmp_path: Path, release: str | None, version_id: str = "22.04") -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if release is not None:
        line, version_id = RELEASES[release]
        (root / "etc/nv_tegra_release").write_text(line + "\n")
    (root / "etc/os-release").write_text(f'NAME="Ubuntu"\nVERSION_ID="{version_id}"\nID=ubuntu\n')
    return root


def fake_pythons(tmp_path: Path, **versions: str) -> str:
    """A PATH whose python3, python3_10 (python3.10), ... print the given version, or fail for "" (whatever the
    machine has in /usr/bin)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, version in versions.items():
        path = bin_dir / name.replace("_", ".")
        path.write_text(f"#!/bin/sh\necho {version}\n" if version else "#!/bin/sh\nexit 127\n")
        path.chmod(0o755)
    return f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


def install_sh(*args: str, root: Path | None = None, path: str | None = None,
               **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in {"PYTHON", "MOBILE_VLA_JETPACK", "MOBILE_VLA_ROOT"}}
    if root is not None:
        environ["MOBILE_VLA_ROOT"] = str(root)
    if path is not None:
        environ["PATH"] = path
    environ.update(env)
    return subprocess.run(["bash", str(INSTALL), *args], env=environ, capture_output=True, text=True, timeout=60)


def field(output: str, name: str) -> str:
    values = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith(f"{name}:")]
    assert len(values) == 1, output
    return values[0]


def chosen_packages(jetpack: str, tmp_path: Path) -> list[str]:
    release = {"6": "jp6", "7": "jp7-orin"}[jetpack]
    result = install_sh("--detect", root=fake_root(tmp_path / jetpack, release))
    assert result.returncode == 0, result.stdout + result.stderr
    return field(result.stdout, "apt packages").split()


# --- detection ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("release", "jetpack", "l4t"), [
    ("jp6", "6", "R36.4.3"), ("jp7-thor", "7", "R38.2.1"), ("jp7-orin", "7", "R39.2.0"),
])
def test_detects_supported_releases(tmp_path: Path, release: str, jetpack: str, l4t: str) -> None:
    path = fake_pythons(tmp_path, python3=PYTHON_OF[jetpack])
    result = install_sh("--detect", root=fake_root(tmp_path, release), path=path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert field(result.stdout, "detected") == f"L4T {l4t}, ubuntu {UBUNTU_OF[jetpack]}, python3 {PYTHON_OF[jetpack]}"
    assert field(result.stdout, "release").startswith(f"JetPack {jetpack} (detected): ")
    assert f"Ubuntu {UBUNTU_OF[jetpack]}, Python {PYTHON_OF[jetpack]}" in field(result.stdout, "release")
    assert field(result.stdout, "python") == f"python3 ({PYTHON_OF[jetpack]})"
    assert "warning:" not in result.stdout and not result.stderr


@pytest.mark.parametrize(("release", "what"), [
    ("jp5", "unsupported release: L4T R35.4.1 on ubuntu 20.04 (JetPack 5"),
    ("r36-on-24.04", "L4T R36.4.3 is JetPack 6, which comes with Ubuntu 22.04, but /etc/os-release says ubuntu 24.04"),
])
def test_refuses_other_releases_saying_what_is_supported_and_how_to_override(
        tmp_path: Path, release: str, what: str) -> None:
    root = fake_root(tmp_path, release)
    result = install_sh("--detect", root=root)
    assert result.returncode == 2
    assert what in result.stderr
    assert ("Supported: JetPack 6 (L4T R36, Ubuntu 22.04, Python 3.10) and JetPack 7 (L4T R38/R39, Ubuntu 24.04, "
            "Python 3.12)") in result.stderr
    assert "MOBILE_VLA_JETPACK=6 or MOBILE_VLA_JETPACK=7" in result.stderr
    assert 'docs/jetson.md, "JetPack 6 and 7"' in result.stderr
    # a real install stops there too, before it writes anything
    destdir = tmp_path / "staged"
    result = install_sh(root=root, DESTDIR=str(destdir))
    assert result.returncode == 2 and not destdir.exists(), result.stdout + result.stderr


def test_override_picks_a_line_on_an_unknown_release(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "jp5")
    result = install_sh("--detect", root=root, MOBILE_VLA_JETPACK="7")
    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "release").startswith("JetPack 7 (MOBILE_VLA_JETPACK=7): ")
    assert field(result.stdout, "apt packages").split() == chosen_packages("7", tmp_path)
    result = install_sh("--detect", root=root, MOBILE_VLA_JETPACK="5")
    assert result.returncode == 2
    assert "MOBILE_VLA_JETPACK must be 6 or 7, got '5'" in result.stderr


def test_not_a_jetson_goes_on_without_jetpack(tmp_path: Path) -> None:
    result = install_sh("--detect", root=fake_root(tmp_path, None, "24.04"))
    assert result.returncode == 0, result.stderr
    assert field(result.stdout, "detected").startswith("no /etc/nv_tegra_release (not a Jetson), ubuntu 24.04")
    assert "the runtime will use ONNX Runtime" in field(result.stdout, "release")
    assert field(result.stdout, "apt packages").split() == chosen_packages("7", tmp_path)  # Ubuntu 24.04's names


@pytest.mark.parametrize("jetpack", ["6", "7"])
def test_picks_the_lines_python_when_python3_is_another(tmp_path: Path, jetpack: str) -> None:
    """TensorRT's bindings exist for the line's system Python only: python3.X is taken over a python3 of another
    version; without one the venv would not see tensorrt, and install.sh says so and how to fix it."""
    want = PYTHON_OF[jetpack]
    root = fake_root(tmp_path, {"6": "jp6", "7": "jp7-orin"}[jetpack])
    path = fake_pythons(tmp_path, python3="3.11", **{f"python{want}".replace(".", "_"): want})
    result = install_sh("--detect", root=root, path=path)
    assert field(result.stdout, "python") == f"python{want} ({want})"
    path = fake_pythons(tmp_path / "none", python3="3.11", **{f"python{want}".replace(".", "_"): ""})
    result = install_sh("--detect", root=root, path=path)
    assert field(result.stdout, "python") == "python3 (3.11)"
    assert (f"warning: JetPack {jetpack}'s TensorRT bindings are for Python {want}, but python3 is 3.11: the venv "
            f"will not see tensorrt (set PYTHON=python{want})") in result.stdout
    result = install_sh("--detect", root=root, path=path, PYTHON="python3")  # an explicit PYTHON is kept
    assert field(result.stdout, "python") == "python3 (3.11)"


def test_refuses_a_venv_python_older_than_3_10(tmp_path: Path) -> None:
    path = fake_pythons(tmp_path, python3="3.8")
    result = install_sh("--with-venv", root=fake_root(tmp_path, None), path=path, DESTDIR=str(tmp_path / "staged"))
    assert result.returncode == 2
    assert "python3 is Python 3.8; the runtime needs 3.10 or newer" in result.stderr
    assert not (tmp_path / "staged").exists()


# --- package names -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jetpack", ["6", "7"])
def test_package_names_exist_in_the_lines_ubuntu(tmp_path: Path, jetpack: str) -> None:
    ubuntu = UBUNTU_OF[jetpack]
    packages = chosen_packages(jetpack, tmp_path)
    assert len(packages) == len(set(packages)), packages
    unknown = set(packages) - UBUNTU_PACKAGES[ubuntu]
    assert not unknown, f"install.sh picks {sorted(unknown)} for Ubuntu {ubuntu}, not in its package index as read"
    assert not set(packages) & NOT_IN_UBUNTU[ubuntu]
    # PyGObject <3.51 (pyproject.toml) builds against girepository-1.0 on both; 3.51+ needs girepository-2.0
    assert "libgirepository1.0-dev" in packages
    assert ("libgirepository-2.0-dev" in packages) == (ubuntu == "24.04")


def doc_package_lists() -> dict[str, list[str]]:
    """The `sudo apt-get install` lines of docs/jetson.md's "JetPack 6 and 7" section, by the JetPack line of the
    comment above each."""
    text = JETSON_DOC.read_text()
    section = text.split("## JetPack 6 and 7\n", 1)[1].split("\n## ", 1)[0]
    lists = dict(re.findall(r"^# JetPack ([67]) \(Ubuntu [\d.]+\)\nsudo apt-get install -y (.+)$", section, re.M))
    return {line: words.split() for line, words in lists.items()}


def test_docs_list_the_packages_install_sh_picks(tmp_path: Path) -> None:
    docs = doc_package_lists()
    assert set(docs) == {"6", "7"}, "docs/jetson.md lost a JetPack line's apt-get install line"
    for jetpack in ("6", "7"):
        assert docs[jetpack] == chosen_packages(jetpack, tmp_path), f"JetPack {jetpack}: docs/jetson.md != install.sh"
    section = JETSON_DOC.read_text().split("## JetPack 6 and 7\n", 1)[1].split("\n## ", 1)[0]
    assert "Nothing here has run on a Jetson" in section
    assert "reading the Ubuntu package index" in section


def dockerfile_package_lists() -> dict[str, tuple[str, list[str]]]:
    """Dockerfile.l4t's `case "$JETPACK"` branches: line -> (Ubuntu version, apt packages)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = re.findall(r"\b([67])\) ubuntu=([\d.]+); set -- ([^;]+) ;;", text)
    return {line: (ubuntu, words.split()) for line, ubuntu, words in found}


def test_dockerfile_installs_the_packages_install_sh_picks(tmp_path: Path) -> None:
    image = dockerfile_package_lists()
    assert set(image) == {"6", "7"}
    for jetpack, (ubuntu, packages) in image.items():
        assert ubuntu == UBUNTU_OF[jetpack]
        assert packages == chosen_packages(jetpack, tmp_path), f"JetPack {jetpack}: Dockerfile.l4t != install.sh"
    text = DOCKERFILE.read_text()
    assert 'apt-get install -y --no-install-recommends "$@"' in text
    assert "ERROR: JETPACK=$JETPACK needs an Ubuntu $ubuntu base image" in text  # the base/line mismatch stop


# --- Dockerfile build arguments ----------------------------------------------------------------------------------


def test_dockerfile_release_build_args() -> None:
    text = DOCKERFILE.read_text()
    before_from, after_from = text.split("\nFROM ", 1)
    assert re.search(r"^ARG L4T_BASE=nvcr\.io/nvidia/l4t-jetpack:r36\.4\.0$", before_from, re.M)
    assert after_from.startswith("${L4T_BASE}\n")  # the base image is the build argument, nothing else
    assert re.search(r"^ARG JETPACK=6$", after_from, re.M)  # after FROM: visible to the RUN steps
    assert '"$JETPACK"' in after_from


def build_lines(text: str) -> list[list[str]]:
    lines = [re.sub(r"^#\s*", "", line).strip() for line in text.splitlines()]
    return [shlex.split(line, posix=True) for line in lines if line.startswith("docker build ")]


def build_args(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--build-arg")


@pytest.mark.parametrize("source", [DOCKERFILE, DEPLOYMENT_DOC])
def test_one_build_line_per_jetpack_line(source: Path) -> None:
    """docs/deployment.md and the Dockerfile's header give the same `docker build` line for each JetPack line, and
    JetPack 6's base is the Dockerfile's default."""
    lines = build_lines(source.read_text())
    by_line = {build_args(argv).get("JETPACK"): argv for argv in lines}
    assert set(by_line) == {"6", "7"}, [" ".join(argv) for argv in lines]
    default = re.search(r"^ARG L4T_BASE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert default is not None
    assert build_args(by_line["6"])["L4T_BASE"] == default.group(1)
    assert build_args(by_line["7"])["L4T_BASE"] == "$JETPACK7_BASE"  # no confirmed r38/r39 tag: the user's base
    for argv in by_line.values():
        assert argv[:4] == ["docker", "build", "-f", "Dockerfile.l4t"]
    assert build_lines(DEPLOYMENT_DOC.read_text()) == build_lines(DOCKERFILE.read_text().split("\nARG ", 1)[0])


@pytest.mark.parametrize(("jetpack", "ubuntu", "expected"), [
    ("6", "22.04", None), ("7", "24.04", None),
    ("7", "22.04", "ERROR: JETPACK=7 needs an Ubuntu 24.04 base image, but L4T_BASE has Ubuntu 22.04"),
    ("5", "20.04", "ERROR: JETPACK must be 6 or 7, got '5'"),
])
def test_dockerfile_stops_on_a_base_of_another_release(tmp_path: Path, jetpack: str, ubuntu: str,
                                                        expected: str | None) -> None:
    """The apt step of Dockerfile.l4t, run by /bin/sh as `docker build` would, with a fake /etc/os-release and
    apt-get replaced by echo: the right list for the line, or a stop that says what to pass."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    (run,) = [line[4:] for line in text.splitlines() if line.startswith('RUN case "$JETPACK"')]
    os_release = tmp_path / "os-release"
    os_release.write_text(f'NAME="Ubuntu"\nVERSION_ID="{ubuntu}"\nID=ubuntu\n')
    script = (run.split(" && rm -rf ")[0].replace("/etc/os-release", str(os_release))
              .replace("apt-get update", "true").replace("apt-get install", "echo apt-get-install"))
    result = subprocess.run(["sh", "-c", script], env={"JETPACK": jetpack, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    if expected is None:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["apt-get-install", "-y", "--no-install-recommends",
                                         *chosen_packages(jetpack, tmp_path)]
    else:
        assert result.returncode == 1 and expected in result.stderr and "docs/deployment.md" in result.stderr
