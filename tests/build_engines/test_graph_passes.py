from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from build_engines.graph_passes import clean_graph, fold_constants, keep_outputs, remove_identities, save_model


def toy_graph() -> gs.Graph:
    """x -> Identity -> Add(c1 + c2 folded) -> y ; x -> Mul -> extra (an unused output)."""
    x = gs.Variable("x", np.float32, (1, 4))
    c1 = gs.Constant("c1", np.ones((1, 4), np.float32))  # tiny: stays inline even in external-data saves
    c2 = gs.Constant("c2", np.full((1, 4), 2.0, np.float32))
    summed, ident, y, extra = (gs.Variable(n, np.float32, (1, 4)) for n in ("summed", "ident", "y", "extra"))
    nodes = [
        gs.Node("Add", inputs=[c1, c2], outputs=[summed]),
        gs.Node("Identity", inputs=[x], outputs=[ident]),
        gs.Node("Add", inputs=[ident, summed], outputs=[y]),
        gs.Node("Mul", inputs=[x, x], outputs=[extra]),
    ]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y, extra], opset=17, ir_version=8)


def ops(graph: gs.Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def test_fold_constants_evaluates_constant_subgraphs() -> None:
    graph = fold_constants(toy_graph())
    assert ops(graph).count("Add") == 1  # c1 + c2 became one constant
    add = next(n for n in graph.nodes if n.op == "Add")
    assert np.array_equal(add.inputs[1].values, np.full((1, 4), 3.0, np.float32))


def test_keep_outputs_drops_unused_outputs_and_their_nodes() -> None:
    graph = keep_outputs(toy_graph(), ["y"])
    assert [t.name for t in graph.outputs] == ["y"] and "Mul" not in ops(graph)


def test_remove_identities_rewires_consumers() -> None:
    graph = remove_identities(toy_graph())
    assert "Identity" not in ops(graph)
    add = next(n for n in graph.nodes if n.op == "Add" and n.outputs[0].name == "y")
    assert add.inputs[0].name == "x"


def test_clean_graph_keeps_the_numbers(tmp_path: Path) -> None:
    model = gs.export_onnx(toy_graph())
    cleaned = clean_graph(model, ["y"])
    onnx.checker.check_model(cleaned)
    assert sorted(n.op_type for n in cleaned.graph.node) == ["Add"]
    path = tmp_path / "toy.onnx"
    assert save_model(cleaned, path) is None  # small: no external data
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})
    np.testing.assert_array_equal(y, x + 3.0)


def test_save_model_uses_external_data_past_two_gigabytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import build_engines.graph_passes as passes

    x = gs.Variable("x", np.float32, (1, 1024))
    y = gs.Variable("y", np.float32, (1, 1024))
    weight = gs.Constant("w", np.full((1, 1024), 0.5, np.float32))
    model = gs.export_onnx(gs.Graph([gs.Node("Mul", inputs=[x, weight], outputs=[y])], [x], [y], opset=17,
                                    ir_version=8))
    monkeypatch.setattr(passes, "TWO_GB", 0)  # pretend the weights are over the protobuf limit
    location = save_model(model, tmp_path / "big.onnx")
    assert location == "big.onnx.data" and (tmp_path / "big.onnx.data").stat().st_size == 4096
    session = ort.InferenceSession(str(tmp_path / "big.onnx"), providers=["CPUExecutionProvider"])
    ones = np.ones((1, 1024), np.float32)
    np.testing.assert_array_equal(session.run(["y"], {"x": ones})[0], ones * 0.5)
