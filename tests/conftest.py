"""Shared fixtures. Importing this file must not import torch: the runtime tests also run in a lean venv."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# DDS in tests: loopback unicast only, multicast off, peers 127.0.0.1 (nothing leaves the machine). Set before any
# participant exists: Cyclone DDS reads it when the domain is first created in the process.
LOOPBACK_DDS = ("<CycloneDDS><Domain id=\"any\"><General><Interfaces><NetworkInterface address=\"127.0.0.1\"/>"
                "</Interfaces><AllowMulticast>false</AllowMulticast></General><Discovery>"
                "<ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>60</MaxAutoParticipantIndex>"
                "<Peers><Peer address=\"127.0.0.1\"/></Peers></Discovery></Domain></CycloneDDS>")
os.environ["CYCLONEDDS_URI"] = LOOPBACK_DDS
os.environ["ROS_DOMAIN_ID"] = "42"  # not the robot's usual 0, should a real ROS 2 node share this machine


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    """A bound loopback UDP socket: what a velocity sink's receiver would be."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    yield sock
    sock.close()


@pytest.fixture(scope="session")
def demo_episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's synthetic episodes (720p, 4 scenarios x 8): prebuilt (MOBILE_VLA_TEST_EPISODES) or generated."""
    prebuilt = os.environ.get("MOBILE_VLA_TEST_EPISODES")
    if prebuilt:
        return Path(prebuilt)
    from build_engines.demo.episodes import SyntheticSpec, generate_episodes

    directory = tmp_path_factory.mktemp("episodes")
    generate_episodes(directory, SyntheticSpec(episodes_per_scenario=8))
    return directory


# Gates that only a NaN or inf fails: the test bundle's parts are INT8 by construction, on any build host. The same
# flags build it in `make lean-test` (Makefile INT8_BY_CONSTRUCTION; tests/deploy/test_locks.py keeps them equal).
# Whether the demo passes its real gate is tested with the default bounds (tests/build_engines/demo/test_demo_build.py).
INT8_BY_CONSTRUCTION = {"mae": 1.0, "sign_agreement": 0.001, "cosine": 0.001}


def assert_int8_everywhere(bundle: Path) -> None:
    """What the INT8 fixture promises: every part INT8 (its Q/DQ graph and its device graph), no warning."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    precisions = {name: part["precision"] for name, part in manifest["parts"].items()}
    assert set(precisions.values()) == {"int8"}, (
        f"the test bundle {bundle} is not INT8 everywhere: {precisions}; it must be built with the gates in "
        f"tests/conftest.py INT8_BY_CONSTRUCTION (make lean-test does), see its accuracy_report.md")
    assert all(part["int8_fp16_onnx"] for part in manifest["parts"].values()) and not manifest.get("warnings")


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory, demo_episodes: Path) -> Path:
    """The demo bundle with every part INT8 by construction: prebuilt (lean venv, MOBILE_VLA_TEST_BUNDLE) or built
    with build_engines."""
    prebuilt = os.environ.get("MOBILE_VLA_TEST_BUNDLE")
    if prebuilt:
        assert_int8_everywhere(Path(prebuilt))
        return Path(prebuilt)
    pytest.importorskip("torch")
    from build_engines.build import BuildOptions, build_bundle
    from build_engines.int8 import GateSettings

    output = tmp_path_factory.mktemp("bundles") / "demo"
    gate = GateSettings(**INT8_BY_CONSTRUCTION)
    bundle = build_bundle(BuildOptions(output=output, int8=True, episodes=demo_episodes, gate=gate)).bundle
    assert_int8_everywhere(bundle)
    return bundle
