"""FP16-typed device graphs: the typing pass on toy graphs, the overflow report on a part built to overflow, the
demo bundle's layer counts and gate, and the TensorRT builder's strongly typed path against a simulated TensorRT
that checks the types of the network it is handed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from build_engines import device_graphs, tensorrt_build
from build_engines.fp16 import FLOAT, FLOAT16, fp16_emulation, layer_precisions, to_fp16, value_types
from runtime.backends.cuda import DeviceInfo
from runtime.bundle import load_bundle

ON_PURPOSE = {"LayerNormalization", "Softmax", "ReduceSum", "Sqrt", "Mul", "Add"}  # KEEP_FP32, the L2 norm, embeds


def toy_model(weight_scale: float = 0.1) -> onnx.ModelProto:
    """x (1, 4, 8) -> MatMul -> LayerNormalization -> MatMul -> Softmax -> y: the shape of a transformer block."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 8)) * weight_scale).astype(np.float32), "w1"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
        numpy_helper.from_array((rng.standard_normal((8, 8)) * 0.1).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="ln", axis=-1, epsilon=1e-12),
        helper.make_node("MatMul", ["n", "w2"], ["s"], name="fc2"),
        helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", FLOAT, [1, 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray, name: str = "y") -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {"x": x})[0]


def test_typing_pass_keeps_io_fp32_and_norms_fp32_on_purpose() -> None:
    x = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    reference = run(toy_model(), x)
    result = to_fp16(toy_model())
    onnx.checker.check_model(result.model)
    types = value_types(result.model)
    assert types["x"] == FLOAT and types["y"] == FLOAT  # the runtime's buffers do not change
    assert types["h"] == FLOAT16 and types["s__as_fp32"] == FLOAT  # MatMuls FP16; Softmax reads FP32
    assert types["n"] == FLOAT  # LayerNormalization's output: FP32 on purpose
    weights = {t.name: t.data_type for t in result.model.graph.initializer}
    assert weights["w1"] == FLOAT16 and weights["w2"] == FLOAT16
    assert weights["gamma"] == FLOAT  # read only by an FP32 node: an epsilon of 1e-12 would flush to zero in FP16
    assert set(result.kept) == {"ln", "softmax"}
    assert "residual stream" in result.kept["ln"] and "exp()" in result.kept["softmax"]
    assert layer_precisions(result.model) == {"int8": 0, "fp16": 2, "fp32": 2,
                                              "fp32_by_op": {"LayerNormalization": 1, "Softmax": 1}}
    native = run(result.model, x)
    emulated = run(fp16_emulation(result.model), x)
    np.testing.assert_allclose(native, reference, atol=2e-3)
    np.testing.assert_allclose(emulated, native, atol=1e-3)  # the emulation rounds where the device stores FP16


def test_overflow_report_flags_a_part_built_to_overflow_and_the_fix_keeps_it_finite(tmp_path: Path) -> None:
    model = toy_model(weight_scale=2e4)  # fc1's outputs reach ~1e5: past FP16's 65504
    path = tmp_path / "part.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    peaks = device_graphs.overflow_scan(path, [{"x": x}])
    report = device_graphs.overflow_report(peaks)
    assert list(report["flagged"]) == ["fc1"] and report["flagged"]["fc1"] > 65504
    assert report["fix"] == "flagged nodes are kept FP32 in the device graphs"
    # What the device would compute without the fix: inf, then NaN. (ONNX Runtime's own run of the FP16 graph hides
    # it: it runs FP16 nodes without CPU kernels in FP32; the gate therefore runs the rounding emulation.)
    naive = to_fp16(onnx.load(str(path))).model
    assert not np.isfinite(run(fp16_emulation(naive), x)).all()
    fixed = to_fp16(onnx.load(str(path)), keep=report["flagged"])
    assert "overflow report" in fixed.kept["fc1"]
    np.testing.assert_allclose(run(fp16_emulation(fixed.model), x), run(model, x), atol=2e-3)


def test_overflow_scan_of_a_part_with_external_data_reads_the_data_in_place(tmp_path: Path) -> None:
    """The real-size trunk (5.4 GB) cannot pass as bytes: the scan graph references the part's own data file."""
    model = toy_model(weight_scale=2e4)
    path = tmp_path / "trunk.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="trunk.onnx.data", size_threshold=0)
    x = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    peaks = device_graphs.overflow_scan(path, [{"x": x}])
    assert set(peaks) == {"fc1", "ln", "fc2", "softmax"} and peaks["fc1"] > 65504
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunk.onnx", "trunk.onnx.data"]  # no copy left behind


def test_qdq_graph_gets_fp16_scales_at_opset_19_and_counts_int8_layers() -> None:
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    weight = numpy_helper.from_array(np.ones((8, 8), np.int8), "wq")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["wd"], name="dqw"),
        helper.make_node("MatMul", ["xd", "wd"], ["h"], name="fc"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", FLOAT, [1, 8])], [scale, zero, weight])
    result = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(result.model)
    assert result.model.opset_import[0].version == 19
    assert {t.name: t.data_type for t in result.model.graph.initializer}["scale"] == FLOAT16
    assert layer_precisions(result.model) == {"int8": 1, "fp16": 1, "fp32": 0, "fp32_by_op": {}}


def test_demo_bundle_holds_device_graphs_with_no_fp32_islands_and_their_gate(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    for name, entry in bundle.manifest.parts.items():
        assert entry.fp16_onnx == f"{name}.fp16.onnx" and entry.device_onnx("fp16") == entry.fp16_onnx
        assert entry.int8_fp16_onnx == f"{name}.int8.fp16.onnx" and entry.device_onnx("int8") == entry.int8_fp16_onnx
        for precision in ("fp16", "int8"):
            layers = entry.layers[precision]
            assert layers["fp16"] > 0 and set(layers["fp32_by_op"]) <= ON_PURPOSE, (name, precision, layers)
        assert entry.layers["int8"]["int8"] > 0
    assert bundle.manifest.parts["trunk"].layers["fp16"]["fp32_by_op"]["LayerNormalization"] > 0
    report = json.loads((demo_bundle / "accuracy_report.json").read_text())["device_graphs"]
    for label in ("fp16", "int8_fp16"):
        result = report["end_to_end"][label]
        assert result["passed"] and result["finite"] and result["mae"] < 0.02 and result["sign_agreement"] >= 0.98
    assert all(report["parts"][name]["fp16"]["cosine_mean"] > 0.999 for name in report["parts"])
    assert report["overflow"]["trunk"]["flagged"] == {}  # the mask's float32-min sentinel is not an activation
    assert "## Device graphs (FP16-typed" in (demo_bundle / "accuracy_report.md").read_text()


# --- the engine builder against a simulated TensorRT ---------------------------------------------------------


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: dict[str, Any] = {}


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: object) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        self.network.source = Path(path).name
        self.network.layers = layer_precisions(onnx.load(path))
        return True


class FakeConfig:
    def __init__(self) -> None:
        self.flags: set[str] = set()

    def set_memory_pool_limit(self, pool: object, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> object:
        return b"cache"

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> None:
        pass

    def get_timing_cache(self) -> SimpleNamespace:
        return SimpleNamespace(serialize=lambda: b"cache")


def fake_tensorrt(built: list[dict[str, Any]]) -> SimpleNamespace:
    """A TensorRT whose builder refuses a strongly typed network with an FP32 layer the graph did not choose, or a
    precision flag on a strongly typed network (TensorRT ignores them there: setting one means a wrong path)."""
    strongly = 5

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> FakeNetwork:
            return FakeNetwork(flags)

        def create_builder_config(self) -> FakeConfig:
            return FakeConfig()

        def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
            typed = bool(network.flags & (1 << strongly))
            assert not (typed and config.flags), f"precision flags {config.flags} on a strongly typed network"
            islands = set(network.layers["fp32_by_op"]) - ON_PURPOSE
            assert not islands, f"FP32 islands {islands} in {network.source}"
            built.append({"source": network.source, "strongly_typed": typed, "flags": sorted(config.flags),
                          "layers": network.layers})
            return b"engine"

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR="E", ERROR="E", WARNING="W")

        def __init__(self) -> None:
            pass

    return SimpleNamespace(
        __version__="10.3.0", Builder=Builder, OnnxParser=FakeParser, ILogger=ILogger,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=strongly),
        BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8"), MemoryPoolType=SimpleNamespace(WORKSPACE="ws"),
    )


def test_engines_are_built_strongly_typed_from_the_device_graphs(demo_bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    built: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(built))
    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: sys.modules["tensorrt"])
    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: DeviceInfo("Orin (simulated)", "8.7", 16 << 30))
    report = tensorrt_build.build_bundle_engines(bundle)
    assert sorted(b["source"] for b in built) == sorted(f"{p}.{kind}.onnx" for p in ("vision", "trunk", "head")
                                                        for kind in ("fp16", "int8.fp16"))
    assert all(b["strongly_typed"] and b["flags"] == [] for b in built)
    record = load_bundle(bundle).manifest.parts["trunk"].engines["int8"]
    assert record["strongly_typed"] and record["source"] == "trunk.int8.fp16.onnx" and record["layers"]["int8"] > 0
    assert set(report["engines"]) == {f"{p}.{k}" for p in ("vision", "trunk", "head") for k in ("fp16", "int8")}
