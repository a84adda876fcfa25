"""`serial:DEVICE[:BAUD]`: one checksummed ASCII line per command (pyserial), BAUD default 115200.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from runtime.errors import MobileVLAError

if TYPE_CHECKING:
    import serial
from runtime.sinks.base import VelocityCommand
from runtime.sinks.formats import encode_serial

DEFAULT_BAUD = 115200
MAX_BAUD = 12_000_000
SERIAL_WRITE_TIMEOUT_S = 0.2  # bounds a send on a port nobody reads (USB CDC with a hung MCU); ~4 ms per line at 115200


class SerialSink:
    """Checksummed `$VEL` lines over a serial port (pyserial), with a write timeout so a stuck port fails fast."""

    def __init__(self, device: str, baud: int = DEFAULT_BAUD, write_timeout_s: float = SERIAL_WRITE_TIMEOUT_S) -> None:
        try:
            import serial
        except ImportError as exc:
            raise MobileVLAError(
                f"sink serial:{device} needs pyserial: `pip install pyserial` (or apt install python3-serial)"
            ) from exc
        self.name = f"serial:{device}"
        self._serial_module = serial
        self._device = device
        self._baud = baud
        self._write_timeout_s = write_timeout_s
        try:
            self._port = self._open()
        except (OSError, ValueError) as exc:
            raise MobileVLAError(serial_open_hint(device, exc)) from exc

    def _open(self) -> serial.Serial:
        # timeout=0: never read; write_timeout: a port whose receiver stopped reading raises instead of blocking.
        return self._serial_module.Serial(self._device, self._baud, timeout=0, write_timeout=self._write_timeout_s)

    def send(self, command: VelocityCommand) -> None:
        # No flush(): it is tcdrain(), which waits without a timeout for the bytes to leave the port.
        self._port.write(encode_serial(command))

    def reopen(self) -> None:
        self._close_port()
        self._port = self._open()  # by-id symlinks make a re-plugged adapter come back under the same name

    def _close_port(self) -> None:
        try:
            self._port.close()
        except OSError:
            pass  # the device is gone: the descriptor is closed anyway

    def close(self) -> None:
        self._close_port()


def serial_open_hint(device: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot open serial port {device}: permission denied; add the user to the dialout group "
                "(`sudo usermod -aG dialout $USER`, then log in again) or run the service as a user in it")
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return (f"serial port {device} is not present; check the cable and the name "
                "(`ls /dev/ttyUSB* /dev/ttyACM* /dev/ttyTHS* /dev/serial/by-id/`)")
    if code == errno.EBUSY:
        return f"serial port {device} is busy: another process holds it (`fuser {device}`)"
    return f"cannot open serial port {device}: {exc}"


def parse_serial(spec: str, rest: str) -> tuple[str, int]:
    if not rest:
        raise MobileVLAError(f"sink {spec!r}: serial needs a device: serial:DEVICE[:BAUD], e.g. serial:/dev/ttyUSB0 "
                             f"(baud default {DEFAULT_BAUD})")
    device, colon, tail = rest.rpartition(":")
    # Device names may hold colons (/dev/serial/by-path/...-usb-0:1.2:1.0-port0): only a plain word after the last
    # colon is read as a baud rate.
    if not colon or not device or any(c in tail for c in "/.-"):
        return rest, DEFAULT_BAUD
    if not tail.isdigit() or not 0 < int(tail) <= MAX_BAUD:
        raise MobileVLAError(f"sink {spec!r}: baud rate {tail!r} is not a positive integer (e.g. 115200); "
                             "expected serial:DEVICE[:BAUD]")
    return device, int(tail)
