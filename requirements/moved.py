"""What moved: the versions a venv holds against a lock's pins (`make test-latest` prints it per venv).

Usage: python3 requirements/moved.py LOCK VENV
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = "--hash=sha256:"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(lock: Path) -> dict[str, list[tuple[str, int]]]:
    """name -> [(version, hash count)], one entry per pin line (a universal lock pins some per Python)."""
    entries: dict[str, list[tuple[str, int]]] = {}
    current: list[tuple[str, int]] | None = None
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = entries.setdefault(canonical(match.group(1)), [])
            current.append((match.group(2), 0))
        elif line.strip().startswith(HASH) and current:
            version, count = current[-1]
            current[-1] = (version, count + 1)
    return entries


def lock_pins(lock: Path) -> dict[str, str]:
    """name -> version; a package pinned per Python (markers) keeps its first line (one-Python locks hold one)."""
    return {name: lines[0][0] for name, lines in lock_entries(lock).items()}


def venv_versions(venv: Path) -> dict[str, str]:
    listing = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json",
                              "--exclude-editable"], capture_output=True, text=True, check=True).stdout
    return {canonical(item["name"]): item["version"] for item in json.loads(listing)}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lock, venv = Path(argv[0]), Path(argv[1])
    pins, held = lock_pins(lock), venv_versions(venv)
    skip = {"pip"}
    moved = [(n, pins[n], held[n]) for n in sorted(pins.keys() & held.keys()) if pins[n] != held[n]]
    added = sorted(held.keys() - pins.keys() - skip)
    missing = sorted(pins.keys() - held.keys())
    print(f"{venv} against {lock}: {len(moved)} moved, {len(added)} not in the lock, {len(missing)} not installed")
    for name, pinned, now in moved:
        print(f"  {name}: {pinned} -> {now}")
    for name in added:
        print(f"  {name}: (not in the lock) {held[name]}")
    for name in missing:
        print(f"  {name}: {pins[name]} -> (not installed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
