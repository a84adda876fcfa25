"""A fake camera on the loopback: raw frames over UDP that a `gst:udpsrc ...` capture reads, for stall, reconnect
and deadman tests (tests/runtime/sources/, tests/runtime/test_loop.py, tests/runtime/test_notify.py)."""

from __future__ import annotations

import socket
import threading
import time


class UdpSender:
    """Small raw RGBA frames over UDP, one frame per datagram, at ~50 fps while `sending` is set."""

    def __init__(self, size: int = 16) -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.size = size
        self.sending = threading.Event()
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def spec(self) -> str:
        return (f"gst:udpsrc address=127.0.0.1 port={self.port} ! "
                f"video/x-raw,format=RGBA,width={self.size},height={self.size},framerate=50/1")

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            value = 0
            while not self._quit.is_set():
                if self.sending.is_set():
                    value = (value + 1) % 256
                    sock.sendto(bytes([value]) * (self.size * self.size * 4), ("127.0.0.1", self.port))
                time.sleep(0.02)

    def __enter__(self) -> UdpSender:
        self.sending.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._quit.set()
        self._thread.join()
