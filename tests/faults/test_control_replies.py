"""Instruction channels validate before they accept: the reply (UDP) / status (ROS 2) and the log say the same.

Real prompt encoders from the demo bundle, real UDP sockets on 127.0.0.1, and the real CLI for the wiring. ROS 2 is
not installable here: its subscription callback is tested on its own (`ros2_callback`), with a fake message.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.bundle import load_bundle
from runtime.cli import main
from runtime.control import InstructionBox, UdpInstructionListener, Validator, encoder_validator, ros2_callback
from runtime.prompt import PromptEncoder

LONG = "go " * 100  # 106 prompt tokens with the template; the demo trunk takes 32
REJECTED = ("the instruction's prompt has 106 tokens; this bundle's trunk was exported for at most 32. Shorten the "
            "instruction, or rebuild the bundle with `build_engines --max-prompt-tokens 106` (or more)")
TRUNCATED = ("the instruction's prompt has 106 tokens, the trunk takes 32: its last 74 tokens are cut off "
             "(instruction.over_long: truncate)")


def validator(demo_bundle: Path, over_long: str) -> Validator:
    bundle = load_bundle(demo_bundle, verify_hashes=False)
    prompt = bundle.manifest.prompt
    return encoder_validator(PromptEncoder(bundle.path(prompt.tokenizer_file), prompt, over_long))


@pytest.fixture
def control(udp_receiver: socket.socket) -> socket.socket:
    """The operator's side of the control channel: a bound loopback socket that sends and reads replies."""
    return udp_receiver


def ask(sock: socket.socket, address: tuple[str, int], message: bytes) -> dict[str, object]:
    sock.sendto(message, address)
    reply: dict[str, object] = json.loads(sock.recv(4096))
    return reply


@pytest.fixture
def listener(request: pytest.FixtureRequest, demo_bundle: Path) -> Iterator[UdpInstructionListener]:
    box = InstructionBox("turn left")
    box.take_change()  # the loop has applied the initial instruction
    udp = UdpInstructionListener(box, "127.0.0.1", 0, validator(demo_bundle, request.param))
    udp.start()
    yield udp
    udp.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "runtime.control" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("listener", ["reject"], indirect=True)
def test_udp_rejects_an_over_long_instruction_with_the_reason_and_keeps_the_current_one(
        listener: UdpInstructionListener, control: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "runtime.control")
    reply = ask(control, listener.address, json.dumps({"instruction": LONG}).encode())
    assert reply == {"ok": False, "error": REJECTED, "instruction": "turn left"}
    assert listener.box.take_change() == (False, "turn left")  # never offered: the loop sees no change
    assert warnings(caplog) == [f"instruction {LONG.strip()!r} from udp 127.0.0.1:{control.getsockname()[1]} "
                                f"rejected, keeping 'turn left': {REJECTED}"]
    # plain text goes through the same check; an accepted one still answers exactly as before
    assert ask(control, listener.address, LONG.encode())["error"] == REJECTED
    assert ask(control, listener.address, b'{"instruction": " turn right "}') == {"ok": True,
                                                                                 "instruction": "turn right"}
    assert listener.box.take_change() == (True, "turn right")
    assert ask(control, listener.address, LONG.encode())["instruction"] == "turn right"  # the kept one, now


@pytest.mark.parametrize("listener", ["reject"], indirect=True)
def test_udp_clear_and_malformed_messages_name_the_current_instruction(
        listener: UdpInstructionListener, control: socket.socket) -> None:
    reply = ask(control, listener.address, b'{"instruction": 3}')
    assert reply == {"ok": False, "error": '"instruction" must be a string or null, got int',
                     "instruction": "turn left"}
    assert ask(control, listener.address, b'{"instruction": null}') == {"ok": True, "instruction": None}
    assert listener.box.take_change() == (True, None)  # cleared: the deadman holds the robot
    assert ask(control, listener.address, b"{oops")["instruction"] is None


@pytest.mark.parametrize("listener", ["truncate"], indirect=True)
def test_udp_accepts_a_truncated_instruction_and_says_so(
        listener: UdpInstructionListener, control: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    reply = ask(control, listener.address, LONG.encode())
    assert reply == {"ok": True, "instruction": LONG.strip(), "warning": TRUNCATED}
    assert listener.box.take_change() == (True, LONG.strip())
    assert warnings(caplog) == [f"instruction {LONG.strip()!r} from udp 127.0.0.1:{control.getsockname()[1]} "
                                f"accepted with a warning: {TRUNCATED}"]


def test_ros2_callback_validates_and_publishes_the_status(demo_bundle: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    box = InstructionBox("turn left")
    published: list[str] = []
    callback = ros2_callback(box, validator(demo_bundle, "reject"), "/mobile_vla/instruction", published.append)
    callback(SimpleNamespace(data=LONG))
    callback(SimpleNamespace(data="turn right"))
    callback(SimpleNamespace(data=""))
    assert [json.loads(text) for text in published] == [
        {"ok": False, "error": REJECTED, "instruction": "turn left"},
        {"ok": True, "instruction": "turn right"},
        {"ok": True, "instruction": None},  # an empty string clears
    ]
    assert warnings(caplog) == [f"instruction {LONG.strip()!r} from ros2 /mobile_vla/instruction rejected, keeping "
                                f"'turn left': {REJECTED}"]
    assert box.take_change() == (True, None)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_cli_wires_the_pipeline_encoder_into_the_listener(demo_bundle: Path, tmp_path: Path, control: socket.socket,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The real runtime: an over-long instruction is refused on the wire, the robot keeps `turn left`, and the
    loop never logs a second, different rejection."""
    port = free_udp_port()
    config = tmp_path / "runtime.yaml"
    config.write_text(f"instruction: {{control: udp, udp_port: {port}}}\n")
    output = tmp_path / "frames.jsonl"
    replies: list[dict[str, object]] = []

    def operator() -> None:
        control.settimeout(0.2)
        deadline = time.monotonic() + 30.0
        while not replies and time.monotonic() < deadline:  # until the listener is up
            try:
                replies.append(ask(control, ("127.0.0.1", port), LONG.encode()))
            except TimeoutError:
                continue
        if replies:  # the loop runs and its signal handlers are in place (they come before the listener)
            time.sleep(0.3)  # a few frames after the refusal
            os.kill(os.getpid(), signal.SIGINT)  # the loop stops after its frame: exit 0

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    code = main(["--config", str(config), "--bundle", str(demo_bundle), "--source", "synthetic",
                 "--instruction", "turn left", "--sink", "none", "--output", str(output), "--frames", "5000"])
    thread.join(timeout=5.0)
    assert code == 0
    assert replies == [{"ok": False, "error": REJECTED, "instruction": "turn left"}]
    assert {json.loads(line)["instruction"] for line in output.read_text().splitlines()} == {"turn left"}
    rejections = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejections) == 1 and rejections[0].endswith(f"rejected, keeping 'turn left': {REJECTED}")
