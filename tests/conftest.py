"""Shared fixtures. Importing this file must not import torch: the runtime tests also run in a lean venv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle: prebuilt (lean venv, MOBILE_VLA_TEST_BUNDLE) or built here with build_engines."""
    prebuilt = os.environ.get("MOBILE_VLA_TEST_BUNDLE")
    if prebuilt:
        return Path(prebuilt)
    pytest.importorskip("torch")
    from build_engines.build import BuildOptions, build_bundle

    return build_bundle(BuildOptions(output=tmp_path_factory.mktemp("bundles") / "demo")).bundle
