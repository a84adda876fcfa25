"""`udp:HOST:PORT`: one JSON datagram per command; HOST may be a name, IPv4 or `[IPv6]`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from runtime.errors import MobileVLAError

if TYPE_CHECKING:
    pass
from runtime.sinks.base import VelocityCommand
from runtime.sinks.formats import encode_json


class UdpSink:
    """One JSON datagram per command on a non-blocking socket (a full socket buffer fails the send, never waits)."""

    def __init__(self, host: str, port: int) -> None:
        self.name = f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"
        self._host = host
        self._port = port
        try:
            self._sock, self._address = self._connect()
        except OSError as exc:
            raise MobileVLAError(
                f"sink {self.name}: cannot resolve or open {host!r} port {port} ({exc}); check the host name "
                "and the network, or give an IP address"
            ) from exc

    def _connect(self) -> tuple[socket.socket, Any]:
        # Resolved again on every re-open: a receiver that got a new DHCP address is found again.
        family, kind, proto, _, address = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        if family == socket.AF_INET:
            # Lets `udp:192.168.1.255:PORT` reach a base controller by broadcast; harmless for unicast.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        return sock, address

    def send(self, command: VelocityCommand) -> None:
        self._sock.sendto(encode_json(command).encode("utf-8"), self._address)

    def reopen(self) -> None:
        self._sock.close()
        self._sock, self._address = self._connect()

    def close(self) -> None:
        self._sock.close()


def parse_udp(spec: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):  # [IPv6]:PORT
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise MobileVLAError(f"sink {spec!r}: unclosed IPv6 bracket; expected udp:[ADDRESS]:PORT")
        port_text = port_text[1:]
    elif ":" not in rest:
        port_text = ""
        host = rest
    else:
        host, _, port_text = rest.rpartition(":")
        if ":" in host:
            raise MobileVLAError(f"sink {spec!r}: an IPv6 address needs brackets: udp:[{host}]:{port_text}")
    if not port_text:
        raise MobileVLAError(f"sink {spec!r}: udp needs a host and a port: udp:HOST:PORT (IPv6: udp:[::1]:PORT)")
    if not host:
        raise MobileVLAError(f"sink {spec!r}: empty host; expected udp:HOST:PORT")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise MobileVLAError(f"sink {spec!r}: port {port_text!r} is not a number in 1-65535; expected udp:HOST:PORT")
    return host, int(port_text)
