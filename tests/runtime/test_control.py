"""`runtime/control.py`: control messages, the instruction box, and what a listener replies. The UDP and ROS 2
listeners themselves run end to end in tests/runtime/test_loop.py and tests/faults/test_control_replies.py."""

from __future__ import annotations

import pytest

from runtime.control import InstructionBox, parse_message, receive
from runtime.errors import MobileVLAError


@pytest.mark.parametrize(("data", "expected"), [
    (b"turn left", "turn left"),
    (b"  \n", None),
    (b'{"instruction": "go around the box"}', "go around the box"),
    (b'{"instruction": null}', None),
    (b'{"instruction": ""}', None),
])
def test_messages_plain_or_json(data: bytes, expected: str | None) -> None:
    assert parse_message(data) == expected


@pytest.mark.parametrize(("data", "message"), [
    (b"\xff\xfe", "control message is not UTF-8 text"),
    (b"{not json", "control message is not valid JSON"),
    (b'{"text": "go"}', 'control message JSON needs the key "instruction"'),
    (b'{"instruction": 3}', '"instruction" must be a string or null, got int'),
])
def test_bad_messages_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(MobileVLAError, match=message):
        parse_message(data)


def test_box_reports_each_change_once() -> None:
    box = InstructionBox("start")
    assert box.take_change() == (True, "start") and box.take_change() == (False, "start")
    box.offer("  next  ", "test")
    assert box.take_change() == (True, "next")
    box.offer("", "test")  # an empty instruction is none: the robot holds still
    assert box.wanted is None and box.take_change() == (True, None)


def test_receive_keeps_the_old_instruction_when_the_new_one_is_refused() -> None:
    box = InstructionBox("old")

    def refuse_long(text: str) -> str | None:
        if len(text) > 5:
            raise MobileVLAError("too long")
        return "short" if len(text) < 3 else None

    assert receive(box, refuse_long, "far too long", "udp") == {"ok": False, "error": "too long", "instruction": "old"}
    assert box.wanted == "old"
    assert receive(box, refuse_long, "go", "udp") == {"ok": True, "instruction": "go", "warning": "short"}
    assert receive(box, refuse_long, None, "udp") == {"ok": True, "instruction": None} and box.wanted is None
