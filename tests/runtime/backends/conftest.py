"""Fixtures of the backend tests: the simulated GPU in place (`fake_gpu`) and the demo bundle with fake engines."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime.backends.cuda as cuda_support
from runtime.backends.tensorrt.runner import runtime_logger
from runtime.bundle import Bundle, load_bundle
from tests.fakes.gpu import FakeDriver, FakeGpu, fake_pycuda, fake_tensorrt, with_fake_engines


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGpu]:
    gpu = FakeGpu()
    package = types.ModuleType("pycuda")
    driver = fake_pycuda(gpu)
    package.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(gpu))
    fake_driver = FakeDriver(gpu)
    monkeypatch.setattr(cuda_support, "load_driver", lambda: fake_driver)
    runtime_logger.cache_clear()
    yield gpu
    runtime_logger.cache_clear()


@pytest.fixture
def engine_bundle(demo_bundle: Path, tmp_path: Path) -> Bundle:
    return load_bundle(with_fake_engines(demo_bundle, tmp_path / "bundle"))
