"""Calibration memory does not grow with the number of frames: the calibrator sees one chunk of feeds at a time and
merges ranges after each, with the same result as one pass over all of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from build_engines.quantize import QuantSettings, quantize_part
from calibration import cascade
from calibration.cascade import CALIBRATION_CHUNK, FeedReader, calibration_stride


def matmul_model(path: Path) -> None:
    weight = numpy_helper.from_array(np.linspace(-1, 1, 16 * 8, dtype=np.float32).reshape(16, 8), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"], name="proj/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def input_scale(path: Path) -> float:
    model = onnx.load(str(path))
    quantize = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(scales[quantize.input[1]])


def feeds(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = [{"x": rng.normal(size=(1, 16)).astype(np.float32)} for _ in range(count)]
    out[count - 1]["x"][0, 3] = 9.0  # the largest value is in the last chunk: a range kept per chunk would miss it
    return out


@pytest.mark.parametrize(("count", "stride"), [(1, 1), (4, 4), (12, 4), (10, 2), (7, 1), (64, 4)])
def test_stride_divides_the_count_and_never_exceeds_the_chunk(count: int, stride: int) -> None:
    assert calibration_stride(count) == stride
    assert count % stride == 0 and stride <= CALIBRATION_CHUNK


def test_calibration_reads_one_chunk_at_a_time_and_merges_to_the_global_range(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = tmp_path / "part.onnx"
    matmul_model(fp32)
    ranges: list[tuple[int, int]] = []
    original = FeedReader.set_range

    def recording(self: FeedReader, start_index: int, end_index: int) -> None:
        ranges.append((start_index, end_index))
        original(self, start_index, end_index)

    monkeypatch.setattr(cascade.FeedReader, "set_range", recording)
    data = feeds(12)
    quantize_part(fp32, tmp_path / "part.int8.onnx", data, QuantSettings(exclude=()), external_data=False)
    assert ranges == [(0, 4), (4, 8), (8, 12)]
    expected = max(float(np.abs(f["x"]).max()) for f in data) / 127  # symmetric min-max over every feed
    assert input_scale(tmp_path / "part.int8.onnx") == pytest.approx(expected, rel=1e-6)


def test_histogram_calibration_merges_across_chunks(tmp_path: Path) -> None:
    fp32 = tmp_path / "part.onnx"
    matmul_model(fp32)
    quantize_part(fp32, tmp_path / "minmax.onnx", feeds(12), QuantSettings(exclude=()), external_data=False)
    quantize_part(fp32, tmp_path / "pct.onnx", feeds(12), QuantSettings(method="percentile", percentile=99.0,
                                                                        exclude=()), external_data=False)
    minmax, percentile = input_scale(tmp_path / "minmax.onnx"), input_scale(tmp_path / "pct.onnx")
    assert 0 < percentile < minmax  # the planted outlier is clipped by the 99th percentile of all 12 feeds
