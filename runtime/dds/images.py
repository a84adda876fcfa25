"""sensor_msgs/Image and sensor_msgs/CompressedImage as DDS types (ROS 2's rmw names), read without a copy per pixel.

Cyclone DDS's Python binding turns a `sequence<uint8>` into a list of Python ints (about 15 ms for a 640x480 RGB
frame, then as long again to make an array), so `deserialize` is replaced by a reader of the CDR bytes that gives
`data` as a NumPy view of the sample. Writing (the tests' camera) uses the binding's own serializer, so both
directions are checked against each other (tests/runtime/sources/test_topic.py)."""

# No `from __future__ import annotations`: Cyclone DDS reads the field types at class creation.

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import sequence, uint8, uint32

from runtime.dds.messages import Header, Time
from runtime.errors import MobileVLAError

CDR_LE, CDR_BE = b"\x00\x01", b"\x00\x00"


class CdrReader:
    """Plain (XCDR1) CDR, as ROS 2 writes it: 4-byte encapsulation header, then fields aligned to their size."""

    def __init__(self, data: bytes, what: str) -> None:
        if len(data) < 4 or data[:2] not in (CDR_LE, CDR_BE):
            raise MobileVLAError(f"{what}: not a plain CDR sample (encapsulation {data[:2].hex()}); the publisher "
                                 f"must use ROS 2's default XCDR1 encoding")
        self.data, self.what, self.pos = data, what, 4
        self.order = "<" if data[:2] == CDR_LE else ">"

    def _align(self, size: int) -> None:
        self.pos += (-(self.pos - 4)) % size

    def _unpack(self, fmt: str, size: int) -> Any:
        self._align(size)
        if self.pos + size > len(self.data):
            raise MobileVLAError(f"{self.what}: the sample ends early (truncated CDR)")
        value = struct.unpack_from(self.order + fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def u32(self) -> int:
        return int(self._unpack("I", 4))

    def i32(self) -> int:
        return int(self._unpack("i", 4))

    def u8(self) -> int:
        return int(self._unpack("B", 1))

    def octets(self) -> memoryview:
        length = self.u32()
        if self.pos + length > len(self.data):
            raise MobileVLAError(f"{self.what}: a sequence of {length} bytes runs past the sample's end")
        view = memoryview(self.data)[self.pos:self.pos + length]
        self.pos += length
        return view

    def string(self) -> str:
        raw = bytes(self.octets())
        return raw[:-1].decode("utf-8", "replace") if raw.endswith(b"\0") else raw.decode("utf-8", "replace")

    def header(self) -> Header:
        sec = self.i32()
        return Header(Time(sec, self.u32()), self.string())


@dataclass
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]  # type: ignore[type-arg]  # an IDL annotation, not a typing generic

    @classmethod
    def deserialize(cls, data: bytes, has_header: bool = True, use_version_2: bool | None = None) -> "Image":
        reader = CdrReader(data, "sensor_msgs/Image")
        header = reader.header()
        height, width, encoding = reader.u32(), reader.u32(), reader.string()
        bigendian, step = reader.u8(), reader.u32()
        return cls(header, height, width, encoding, bigendian, step, np.frombuffer(reader.octets(), np.uint8))  # type: ignore[arg-type]


@dataclass
class CompressedImage(IdlStruct, typename="sensor_msgs::msg::dds_::CompressedImage_"):
    header: Header
    format: str  # "jpeg", "png", or image_transport's "rgb8; jpeg compressed bgr8"
    data: sequence[uint8]  # type: ignore[type-arg]  # an IDL annotation, not a typing generic

    @classmethod
    def deserialize(cls, data: bytes, has_header: bool = True,
                    use_version_2: bool | None = None) -> "CompressedImage":
        reader = CdrReader(data, "sensor_msgs/CompressedImage")
        header = reader.header()
        return cls(header, reader.string(), np.frombuffer(reader.octets(), np.uint8))  # type: ignore[arg-type]
