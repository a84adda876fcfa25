"""`python -m runtime.listen udp:HOST:PORT`: print the velocity commands a UDP sink sends (the receiving side's view).

A debugging aid for the robot's base controller side: run it where the commands should arrive, then start
`runtime --sink udp:HOST:PORT`. Prints one line per datagram; exits after `--count` datagrams or `--timeout`
seconds without one.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from runtime.errors import MobileVLAError, run_cli
from runtime.sinks.udp import parse_udp


def listen(spec: str, count: int | None, timeout_s: float) -> int:
    """Receive and print datagrams; returns how many arrived."""
    if not spec.startswith("udp:"):
        raise MobileVLAError(f"listen address {spec!r}: expected udp:HOST:PORT")
    host, port = parse_udp(spec, spec[4:])
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise MobileVLAError(f"cannot listen on {spec}: {exc.strerror}; pick a free port") from exc
        sock.settimeout(timeout_s)
        received = 0
        print(f"listening on {spec}", flush=True)
        while count is None or received < count:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                print(f"no datagram for {timeout_s:g} s; stopping", flush=True)
                break
            received += 1
            try:
                message = json.loads(data)
                line = (f"seq {message['seq']:>6}  linear {message['linear']}  angular {message['angular']}  "
                        f"stop {message['stop']} {message['reason']}")
            except (ValueError, KeyError, TypeError):
                line = f"unparsable datagram: {data[:80]!r}"
            print(line, flush=True)
    return received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.listen", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="udp:HOST:PORT to listen on (the runtime's --sink address)")
    parser.add_argument("--count", type=int, default=None, help="exit after this many datagrams")
    parser.add_argument("--timeout", type=float, default=10.0, help="exit after this many seconds of silence")
    args = parser.parse_args(argv)
    return run_cli("listen", False, lambda: 0 if listen(args.address, args.count, args.timeout) else 1)


if __name__ == "__main__":
    sys.exit(main())
