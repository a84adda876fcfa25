"""FLOPs counted from an exported ONNX graph: the independent check of the analytical count (model.py).

The same op classes as model.py (MatMul, Gemm, Conv, LSTM; a multiply-add as 2), their shapes from ONNX shape
inference. Weights are never loaded: initializers keep their dims, so a 5 GB trunk counts in seconds. onnx is imported
here only, lazily: `build_engines --plan` without a bundle does not need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import MobileVLAError

if TYPE_CHECKING:
    import onnx

COUNTED_OPS = ("MatMul", "Gemm", "Conv", "LSTM")
INTEGER_TYPES = (6, 7)  # onnx.TensorProto.INT32, INT64


@dataclass(frozen=True)
class GraphFlops:
    flops: int
    by_op: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    initializer_elements: int = 0


def count_onnx_file(path: Path) -> GraphFlops:
    """Count an ONNX file's FLOPs without reading its weights (external data stays on disk)."""
    try:
        import onnx
    except ImportError as exc:
        raise MobileVLAError(f"counting {path.name}'s FLOPs needs the onnx package (pip install -e '.[export]'); "
                             f"the plan without a graph count does not") from exc
    if not path.is_file():
        raise MobileVLAError(f"{path} is missing: the bundle's manifest lists it; rebuild the bundle")
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise MobileVLAError(f"{path} is not a readable ONNX graph ({exc}); rebuild the bundle") from exc
    for tensor in model.graph.initializer:
        # Shape inference needs the weights' dims, not their bytes: drop them (a 1.3 GB vision graph then counts in
        # a few MB). Integer tensors stay: Reshape and Slice read their values.
        if tensor.data_type not in INTEGER_TYPES and math.prod(tensor.dims) > 1024:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    return count_graph(model)


def count_graph(model: onnx.ModelProto) -> GraphFlops:
    """FLOPs of the MatMul/Gemm/Conv/LSTM nodes of `model`, from shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(int(d.dim_value) for d in dims)
    by_op: dict[str, int] = {}
    nodes = 0
    for node in graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        flops = node_flops(node, shapes)
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
        nodes += 1
    elements = sum(math.prod(t.dims) for t in graph.initializer)
    return GraphFlops(sum(by_op.values()), by_op, nodes, elements)


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise MobileVLAError(f"cannot count the FLOPs of {node.op_type} node {node.name!r}: the shape of "
                                 f"{name!r} is unknown after ONNX shape inference (a graph with dynamic shapes? "
                                 f"the bundle's parts have fixed shapes: rebuild it)")
        return shapes[name]

    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "MatMul":
        return 2 * math.prod(shape(node.output[0])) * shape(node.input[0])[-1]
    if node.op_type == "Gemm":
        a = shape(node.input[0])
        k = a[0] if "transA" in attrs and attrs["transA"].i else a[1]
        return 2 * math.prod(shape(node.output[0])) * k
    if node.op_type == "Conv":  # weight (M, C/group, kH, kW): every output element sums C/group * kH * kW products
        return 2 * math.prod(shape(node.output[0])) * math.prod(shape(node.input[1])[1:])
    # LSTM: X (seq, batch, in) [layout 0], W (dirs, 4H, in), R (dirs, 4H, H)
    x, w, r = shape(node.input[0]), shape(node.input[1]), shape(node.input[2])
    seq, batch = (x[1], x[0]) if "layout" in attrs and attrs["layout"].i else (x[0], x[1])
    return 2 * seq * batch * w[0] * w[1] * (w[2] + r[2])


def relative_difference(analytic: int, graph: int) -> float:
    """|analytic - graph| / graph: the agreement the plan reports (and its test bounds at 5%)."""
    return abs(analytic - graph) / graph if graph else math.inf

