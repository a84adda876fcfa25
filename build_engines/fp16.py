"""FP16-typed graphs for the device (docs/design.md §4): what a strongly typed TensorRT network runs as written.

A strongly typed network runs every tensor in the type the ONNX gives it, so an FP32 graph (or an INT8 Q/DQ graph
whose float parts are FP32) runs FP32 on the Jetson. `to_fp16` rewrites a part's graph so its weights and
activations are FP16, keeping FP32 only where numerics need it, on purpose (`KEEP_FP32` says which ops and why):

- LayerNormalization: the mean/variance of a residual stream that can pass FP16's range (65504);
- Softmax: exp() of attention logits and their sum;
- the L2 normalization of the image tokens (x·x, ReduceSum, Sqrt, Clip): squares of a 1024-wide vector;
- the trunk's scaled embedding sum (`embeds · √2048 + positions`): Kosmos-2 multiplies the whole sequence by ≈45;
- any node the overflow report flags (largest |activation| within 4× of the FP16 limit over the calibration frames).

Weight-bound ops (MatMul, Gemm, Conv, LSTM, Gather) are FP16 whatever their inputs; an elementwise op stays FP32
when all its float inputs are FP32 (no Cast ping-pong after a kept op), else FP16. Graph inputs and outputs keep
their FP32 types (Casts at the boundary), so the runtime's buffers and the manifest's specs do not change. Float
constants are clipped to ±65504 on the way to FP16 (an FP32 `finfo.min` attention mask would become -inf).

`fp16_emulation` turns an FP16-typed graph back into one ONNX Runtime's CPU kernels run, rounding every FP16
tensor to FP16 where the device would store it: that is how the CPU gates what the device will compute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = 65504.0
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
KEEP_FP32 = {
    "LayerNormalization": "mean/variance of the residual stream, which can pass 65504",
    "Softmax": "exp() of the attention logits and their sum",
    "ReduceSum": "sum of squares in the L2 normalization",
    "ReduceSumSquare": "sum of squares in the L2 normalization",
    "ReduceL2": "L2 norm",
    "ReduceMean": "normalization statistics",
    "Sqrt": "the L2 norm's root",
    "Pow": "squares before a reduction",
}
HEAVY = ("MatMul", "Gemm", "Conv", "LSTM", "GRU", "RNN", "Gather", "MatMulInteger", "ConvInteger")
# Ops that move or select data: their precision is their input's, they are no "layer" of their own.
NOT_LAYERS = ("Cast", "QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
              "Concat", "Slice", "Gather", "Shape", "Constant", "Identity", "Flatten", "Expand", "Where", "Equal",
              "And", "Not", "Split")
QUANTIZABLE_INPUTS = ("DequantizeLinear",)
QDQ_FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19 on

NodePredicate = Callable[[onnx.NodeProto], bool]


@dataclass
class Fp16Result:
    model: onnx.ModelProto
    kept: dict[str, str] = field(default_factory=dict)  # node name -> why it stays FP32
    clipped: list[str] = field(default_factory=list)  # constants whose values passed ±65504


LARGE = 1 << 16  # elements: initializers this big are left out of the copy shape inference reads


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the data of its large initializers left out (dims and types kept), so shape inference never
    serializes gigabytes of weights (protobuf's 2 GB limit) and never needs them: only small shape tensors matter."""
    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.name = model.graph.name
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.node.extend(model.graph.node)
    for tensor in model.graph.initializer:
        if int(np.prod(tensor.dims)) >= LARGE:
            stub = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            stub.data_location = TensorProto.EXTERNAL
            stub.external_data.add(key="location", value="not-loaded")
            graph.initializer.append(stub)
        else:
            graph.initializer.append(tensor)
    return light


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, from shape inference (the graph's own inputs, outputs and initializers)."""
    inferred = onnx.shape_inference.infer_shapes(light_copy(model), strict_mode=False)
    types: dict[str, int] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        types[info.name] = info.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = attribute.t.data_type
    return types


def embedding_sum(model: onnx.ModelProto, initializer: str = "positions") -> set[str]:
    """The trunk's `embeds · scale + positions`: the Add that consumes the positions table and the Mul feeding it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    keep: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Add" and initializer in node.input:
            keep.add(node.name)
            keep |= {producers[i].name for i in node.input if i in producers and producers[i].op_type == "Mul"}
    return keep


def square_before_reduce(model: onnx.ModelProto) -> set[str]:
    """`x · x` feeding a reduction (the L2 normalization): the square itself would pass 65504 first."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return {node.name for node in model.graph.node
            if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]
            and any(c.op_type.startswith("Reduce") for c in consumers.get(node.output[0], []))}


def to_fp16_array(values: np.ndarray) -> tuple[np.ndarray, bool]:
    clipped = bool(np.any(np.abs(values[np.isfinite(values)]) > FP16_MAX)) if values.size else False
    return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), clipped


def to_fp16(model: onnx.ModelProto, keep: Iterable[str] = ()) -> Fp16Result:
    """The FP16-typed graph of `model` (FP32 I/O kept); `keep` names more nodes to run FP32 (overflow report)."""
    name_nodes(model)
    types = value_types(model)
    graph = model.graph
    kept = {name: "flagged by the overflow report (within 4x of the FP16 limit)" for name in keep}
    kept.update({name: "the scaled embedding sum (Kosmos-2 multiplies the sequence by about 45)"
                 for name in embedding_sum(model)})
    kept.update({name: "square before a reduction (L2 normalization)" for name in square_before_reduce(model)})
    for node in graph.node:
        if node.op_type in KEEP_FP32:
            kept[node.name] = KEEP_FP32[node.op_type]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    fp32_tensors = {i.name for i in graph.input if types.get(i.name) == FLOAT}
    initializers = {t.name: t for t in graph.initializer}
    # Initializers read only by FP32 nodes stay FP32 (an epsilon of 1e-12 would flush to zero in FP16).
    for name, tensor in initializers.items():
        if tensor.data_type == FLOAT and all(c.name in kept for c in consumers.get(name, [])):
            fp32_tensors.add(name)
    result = Fp16Result(model)
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__as_{'fp32' if to == FLOAT else 'fp16'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}__cast", to=to))
            casts[key] = out
        return casts[key]

    for node in graph.node:
        float_inputs = [i for i in node.input if i and types.get(i) in (FLOAT, FLOAT16)]
        if node.name in kept:
            runs_fp32 = True
        elif node.op_type in HEAVY:
            runs_fp32 = False
        else:
            runs_fp32 = bool(float_inputs) and all(i in fp32_tensors for i in float_inputs)
            if runs_fp32 and node.op_type not in KEEP_FP32 and node.op_type not in NOT_LAYERS:
                result.kept.setdefault(node.name, "all its inputs are FP32")
        for index, name in enumerate(node.input):
            if name not in float_inputs or (node.op_type == "DequantizeLinear" and index != 1):
                continue
            if runs_fp32 and name not in fp32_tensors:
                node.input[index] = cast(name, FLOAT)
            elif not runs_fp32 and name in fp32_tensors:
                node.input[index] = cast(name, FLOAT16)
        if not runs_fp32:
            retype_node(node, result)
        outputs = [o for o in node.output if types.get(o) in (FLOAT, FLOAT16)]
        if runs_fp32:
            fp32_tensors.update(outputs)
        new_nodes.append(node)
    result.kept.update(kept)
    fix_graph_outputs(graph, fp32_tensors, new_nodes, types)
    for name, tensor in initializers.items():
        if tensor.data_type == FLOAT and name not in fp32_tensors:
            values, clipped = to_fp16_array(numpy_helper.to_array(tensor))
            if clipped:
                result.clipped.append(name)
            tensor.CopyFrom(numpy_helper.from_array(values, name))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in new_nodes):
        set_opset(model, QDQ_FP16_OPSET)
    present = {node.name for node in new_nodes}
    result.kept = {name: why for name, why in result.kept.items() if name in present}
    return result


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: the FP32 choices and the overflow report refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}__{index}"
        seen.add(node.name)


def set_opset(model: onnx.ModelProto, version: int) -> None:
    """Raise the default domain's opset (FP16 scales in Q/DQ need opset 19; the ops these graphs use read the same
    from 17 to 19)."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def retype_node(node: onnx.NodeProto, result: Fp16Result) -> None:
    """An FP16 node: Casts to float become Casts to FP16, float constants become FP16 constants."""
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
            attribute.i = FLOAT16
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            values, clipped = to_fp16_array(numpy_helper.to_array(attribute.t))
            if clipped:
                result.clipped.append(node.name)
            attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))


def fix_graph_outputs(graph: onnx.GraphProto, fp32_tensors: set[str], nodes: list[onnx.NodeProto],
                      types: dict[str, int]) -> None:
    """Graph outputs keep FP32: an FP16 producer's output is renamed and cast back under the output's name."""
    for output in graph.output:
        if types.get(output.name) != FLOAT or output.name in fp32_tensors:
            continue
        internal = f"{output.name}__fp16"
        for node in nodes:
            node.input[:] = [internal if i == output.name else i for i in node.input]
            node.output[:] = [internal if o == output.name else o for o in node.output]
        nodes.append(helper.make_node("Cast", [internal], [output.name], name=f"{output.name}__cast", to=FLOAT))


def fp16_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 graph that computes what the FP16-typed `model` computes, rounding every FP16 tensor to FP16.

    Every FP16 initializer and constant becomes FP32 (its values are exactly FP16 values), every Cast to FP16
    becomes a round trip FP32 -> FP16 -> FP32, and every FP16 node output is rounded the same way: ONNX Runtime's
    CPU kernels are FP32, the rounding is where the device stores FP16.
    """
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    graph = emulated.graph
    types = value_types(emulated)
    for tensor in graph.initializer:
        if tensor.data_type == FLOAT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT16:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float32),
                                                             attribute.t.name))
        nodes.append(node)
        rounded = [o for o in node.output if types.get(o) == FLOAT16]
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == FLOAT16:
                    attribute.i = FLOAT
        for name in rounded:
            raw = f"{name}__unrounded"
            node.output[:] = [raw if o == name else o for o in node.output]
            half = f"{name}__half"
            nodes.append(helper.make_node("Cast", [raw], [half], name=f"{half}__cast", to=FLOAT16))
            nodes.append(helper.make_node("Cast", [half], [name], name=f"{name}__round", to=FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return emulated


def layer_precisions(model: onnx.ModelProto) -> dict[str, object]:
    """What a strongly typed TensorRT network built from `model` runs each layer in, counted from the graph.

    A layer is every compute node (data movement, Casts and Q/DQ are not layers: TensorRT fuses them). It is INT8
    when a weight or activation reaches it through DequantizeLinear, else the type of its float output.
    """
    types = value_types(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    counts: Counter[str] = Counter()
    fp32_ops: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in NOT_LAYERS and node.op_type != "Gather":
            continue
        if any(i in producers and producers[i].op_type in QUANTIZABLE_INPUTS for i in node.input):
            counts["int8"] += 1
            continue
        out_type = next((types[o] for o in node.output if types.get(o) in (FLOAT, FLOAT16)), None)
        if out_type is None:
            continue
        if out_type == FLOAT:
            counts["fp32"] += 1
            fp32_ops[node.op_type] += 1
        else:
            counts["fp16"] += 1
    return {"int8": counts["int8"], "fp16": counts["fp16"], "fp32": counts["fp32"],
            "fp32_by_op": dict(sorted(fp32_ops.items()))}
