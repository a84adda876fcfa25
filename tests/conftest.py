"""Shared fixtures. Importing this file must not import torch: the runtime tests also run in a lean venv."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


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


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory, demo_episodes: Path) -> Path:
    """The demo bundle with INT8 parts: prebuilt (lean venv, MOBILE_VLA_TEST_BUNDLE) or built with build_engines."""
    prebuilt = os.environ.get("MOBILE_VLA_TEST_BUNDLE")
    if prebuilt:
        return Path(prebuilt)
    pytest.importorskip("torch")
    from build_engines.build import BuildOptions, build_bundle

    output = tmp_path_factory.mktemp("bundles") / "demo"
    return build_bundle(BuildOptions(output=output, int8=True, episodes=demo_episodes)).bundle
