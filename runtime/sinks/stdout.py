"""`stdout` (or `-`): JSON lines on standard output, flushed per line.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    pass
from runtime.sinks.base import VelocityCommand
from runtime.sinks.formats import encode_json


class StdoutSink:
    """JSON lines on stdout (or another text stream), flushed per line so a pipe reader sees each command at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.name = "stdout"
        self._stream = stream if stream is not None else sys.stdout

    def send(self, command: VelocityCommand) -> None:
        self._stream.write(encode_json(command) + "\n")
        self._stream.flush()

    def reopen(self) -> None:
        pass  # nothing to re-open: a closed stdout stays closed, and its sends keep being counted as failures

    def close(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass  # already closed or broken: nothing left to deliver
