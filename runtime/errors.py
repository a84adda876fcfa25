"""The project's one exception type for user errors (DESIGN §6).

A `MobileVLAError` message says what happened, what was expected and how to fix it. CLIs print it without a
traceback and exit non-zero. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
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
