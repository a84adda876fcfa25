"""Every flag and config key a message or help text names exists: a user who follows the advice in an error finds
the flag in `--help` and the key in the config reference (issue 13: a message named `--monitor-source`, which no
CLI has). Walks the string literals of the packages' source."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from runtime.config import SECTIONS, RuntimeConfig
from runtime.ros.args import ROS_FLAGS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "build_engines", "calibration")
# Flags of other programs that messages tell the user to run, with the program.
OTHER_TOOLS = {
    "--interval": "tegrastats",
    "--system-site-packages": "python -m venv",
    "--list-devices": "v4l2-ctl",
    "--runtime": "docker run",
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
KEY = re.compile(r"(?<![\w./])(source|instruction|schedule|safety|monitor|ros2)\.(?!py\b)([a-z_]+)\b")  # not monitor.py


def literals() -> list[tuple[Path, str]]:
    found = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.append((path.relative_to(REPO), node.value))
    return found


def defined_flags() -> set[str]:
    flags = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                    flags.update(str(a.value) for a in node.args if isinstance(a, ast.Constant)
                                 and str(a.value).startswith("--"))
    return flags


def test_every_flag_named_in_a_message_exists() -> None:
    known = defined_flags() | set(OTHER_TOOLS) | set(ROS_FLAGS)
    unknown = {(str(path), flag) for path, text in literals() for flag in FLAG.findall(text) if flag not in known}
    assert not unknown, sorted(unknown)


def test_every_config_key_named_in_a_message_exists() -> None:
    keys = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)}  # type: ignore[arg-type]
    keys |= {f.name for f in fields(RuntimeConfig)}
    named = {(str(path), f"{section}.{key}") for path, text in literals() for section, key in KEY.findall(text)}
    unknown = {(path, key) for path, key in named if key not in keys}
    assert named and not unknown, sorted(unknown)


def test_the_walk_catches_a_flag_no_cli_has() -> None:
    assert FLAG.findall("use --monitor-source proc") == ["--monitor-source"]
    assert "--monitor-source" not in defined_flags() | set(OTHER_TOOLS)
