"""The project's one exception type for user errors (DESIGN §6).

A `MobileVLAError` message says what happened, what was expected and how to fix it. CLIs print it without a
traceback and exit non-zero. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class MobileVLAError(Exception):
    """An error caused by the user's input (files, flags, settings), not by a bug in this project."""
