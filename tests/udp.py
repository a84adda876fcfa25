"""Helpers for tests that read what the runtime sends over UDP (importing this must not import torch)."""

from __future__ import annotations

import json
import socket


def drain(sock: socket.socket, quiet_s: float = 0.3) -> list[dict[str, object]]:
    """Every JSON datagram until none arrives for `quiet_s`."""
    messages = []
    sock.settimeout(quiet_s)
    while True:
        try:
            messages.append(json.loads(sock.recv(65536)))
        except TimeoutError:
            return messages
