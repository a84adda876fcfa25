"""The project's one exception type for user errors (docs/design.md §6), and the range checks that raise it.

A `MobileVLAError` message says what happened, what was expected and how to fix it. CLIs print it without a
traceback and exit non-zero. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable


class MobileVLAError(Exception):
    """An error caused by the user's input (files, flags, settings), not by a bug in this project."""


def run_cli(prog: str, verbose: bool, body: Callable[[], int]) -> int:
    """Shared CLI wrapper: logging to stderr; a user error prints one line, no traceback, and exits 2."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return body()
    except MobileVLAError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def range_problem(value: float, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False) -> str | None:
    """Why `value` is outside `[low, high]` (an open end excludes the bound), or None when it is inside.

    NaN and ±inf are always refused: every comparison with NaN is false, so `nan > 0` must never be the only check.
    """
    if not math.isfinite(value):
        return "it is not a finite number"
    if low is not None and (value <= low if low_open else value < low):
        return f"it must be {'>' if low_open else '>='} {low:g}"
    if high is not None and (value >= high if high_open else value > high):
        return f"it must be {'<' if high_open else '<='} {high:g}"
    return None


def check_range(name: str, value: float, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, fix: str = "") -> None:
    """Raise a `MobileVLAError` naming `name` (a flag or key) when `value` is non-finite or out of range."""
    problem = range_problem(value, low, high, low_open=low_open, high_open=high_open)
    if problem is not None:
        raise MobileVLAError(f"{name} {value!r} is out of range: {problem}{'; ' + fix if fix else ''}")
