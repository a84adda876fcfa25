"""onnx-graphsurgeon passes (docs/design.md §6): each one short function ending in `cleanup().toposort()`."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

TWO_GB = 2**31


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Evaluate every subgraph that depends only on constants (position tables, masks, shapes)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # folding runs ORT, whose optimizer notes are noise here
    graph.fold_constants()
    return graph.cleanup().toposort()


def keep_outputs(graph: gs.Graph, names: list[str]) -> gs.Graph:
    """Drop graph outputs not in `names` and the nodes only they needed."""
    graph.outputs = [t for t in graph.outputs if t.name in names]
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()


def remove_identities(graph: gs.Graph) -> gs.Graph:
    """Bypass Identity nodes (the exporter leaves them around weights and outputs)."""
    for node in [n for n in graph.nodes if n.op == "Identity"]:
        source, target = node.inputs[0], node.outputs[0]
        if target in graph.outputs:
            continue  # renaming graph outputs would change the part's interface
        for consumer in list(target.outputs):
            consumer.inputs = [source if t is target else t for t in consumer.inputs]
        node.outputs.clear()
    return graph.cleanup().toposort()


def clean_graph(model: onnx.ModelProto, output_names: list[str], fold: bool = True) -> onnx.ModelProto:
    """The standard pipeline every exported part goes through.

    `fold=False` is for graphs whose weights stay in external files (> 2 GB): folding would need every weight in
    memory several times over; the exporter's own constant folding has already run on them.
    """
    if fold:  # static shapes let shape subgraphs fold away
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = gs.import_onnx(model)
    graph = keep_outputs(graph, output_names)
    graph = remove_identities(graph)
    if fold:
        graph = fold_constants(graph)
    return gs.export_onnx(graph)  # keeps the exporter's IR version (gs records it on import)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: Path) -> str | None:
    """Save; weights go to `<name>.data` beside the graph when the file would pass protobuf's 2 GB limit.

    Returns the external data file name, or None.
    """
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size < TWO_GB - (64 << 20):
        onnx.save_model(model, str(path))
        return None
    location = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    return location
