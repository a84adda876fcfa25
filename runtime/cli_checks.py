"""Checks of the runtime's flags that must fail before the robot moves or a long run starts, not after it.

A benchmark takes minutes on the CPU and a `--score` longer: a `--json` into a missing directory must be refused at
start, not once the numbers are in. Counts are whole numbers in range; a `--frames -5` is a typo, not "forever".
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from runtime.benchmark import import_pyplot
from runtime.errors import MobileVLAError

MAX_FRAMES = 100_000_000  # ~38 days at 30 FPS


def count_type(low: int) -> Callable[[str], int]:
    """An argparse `type` for an integer count of at least `low` (argparse reports a bad one as a usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= MAX_FRAMES:
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {low} to {MAX_FRAMES}")
        return value

    parse.__name__ = "count"
    return parse


def check_writable(flag: str, target: Path) -> None:
    """Refuse an output path that cannot be written: its directory missing or read-only, or a directory itself."""
    if target.is_dir():
        raise MobileVLAError(f"{flag} {target} is a directory; give a file path (e.g. {target}/report.json)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise MobileVLAError(f"{flag} {target}: directory {parent} does not exist; create it first or write "
                             f"elsewhere")
    if target.exists() and not os.access(target, os.W_OK):
        raise MobileVLAError(f"{flag} {target} exists and is not writable; fix its permissions or write elsewhere")
    if not target.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise MobileVLAError(f"{flag} {target}: directory {parent} is not writable; write elsewhere")


def check_outputs(args: argparse.Namespace) -> None:
    """Every file the run will write, checked before it starts."""
    for flag, value in (("--json", args.json), ("--plot", args.plot)):
        if value is not None:
            check_writable(flag, Path(value))
    if args.output not in (None, "-", "none"):
        check_writable("--output", Path(args.output))
    if args.plot is not None:
        if not args.benchmark:
            raise MobileVLAError("--plot draws the benchmark's latencies; use it with --benchmark")
        import_pyplot()
