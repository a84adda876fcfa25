"""Every cadence of runtime/plan.py on the TensorRT backend, against the simulated GPU of tests/fakes/gpu.py: the
policy families' bundles (build_engines/adapters/) run frame by frame as on ONNX Runtime.

Here, not in tests/runtime/: it builds the bundles with torch, which is imported before any fake `tensorrt` module
is put in place (torch's exporter looks that name up)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401 - initialized before the fake GPU's modules exist

from build_engines.build import BuildOptions, build_bundle
from runtime.backends.onnxruntime import onnx_backend
from runtime.backends.tensorrt.backend import open_tensorrt_backend
from runtime.bundle import load_bundle
from tests.fakes.gpu import FakeGpu, with_fake_engines
from tests.runtime.backends.conftest import fake_gpu  # noqa: F401 - the fixture
from tests.runtime.backends.tensorrt.test_backend import run_side_by_side


@pytest.mark.parametrize("family", ["feature-fusion", "clip-lstm", "robovlms-mlp"])
def test_every_cadence_runs_on_the_simulated_gpu_as_on_onnxruntime(request: pytest.FixtureRequest, tmp_path: Path,
                                                                    family: str) -> None:
    """Per-instruction parts run in set_text only, window parts keep their history on the device, and a bundle
    without a window is captured as a CUDA graph from its second frame (runtime/plan.py)."""
    built = build_bundle(BuildOptions(output=tmp_path / "built", policy=family, random_weights=True, preset="tiny",
                                      parity_frames=2, engines=False)).bundle
    gpu: FakeGpu = request.getfixturevalue("fake_gpu")  # after the export: torch looks the real tensorrt name up
    bundle = load_bundle(with_fake_engines(built, tmp_path / "bundle"))
    backend, reference = open_tensorrt_backend(bundle, "fp16"), onnx_backend(bundle)
    with reference, backend:
        run_side_by_side([reference, backend], bundle, [("go to the box", 11), ("turn left", 10)])
        assert backend.graph == "captured"
        assert backend.stages == tuple(bundle.manifest.parts) == reference.stages
        instruction_parts = bundle.plan.instruction_parts
        assert backend.instruction_runs == reference.instruction_runs == (2 if instruction_parts else 0)
        assert all(backend.stage_ms[name] > 0 for name in instruction_parts)
    assert gpu.memory.blocks == {}
