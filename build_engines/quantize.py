"""Explicit INT8 quantization of one part: a Q/DQ ONNX that TensorRT parses as an INT8 network (docs/design.md §4).

ONNX Runtime's static quantizer writes the graph in QDQ format with:
- symmetric INT8 activations and weights (zero point 0, as TensorRT requires);
- per-channel weights along the output-channel axis (MatMul weights are (K, N): axis 1; Gemm with transB: axis 0);
- Q/DQ only in front of the inputs of the op types in `QuantSettings.op_types` (default MatMul and Gemm, the
  weight-bound ops), never on their outputs: TensorRT's recommended placement. LayerNorm, Softmax, GELU and the LSTM
  are not quantized; neither are the attention MatMuls between two activations (Q·Kᵀ, P·V) unless
  `attention_matmuls` is set: measured, they cost accuracy and hold no weights to shrink (docs/int8.md).

`check_qdq` reads the result back and proves those properties; the build records its summary in the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import MobileVLAError
from runtime.preprocess import check_choice

if TYPE_CHECKING:  # onnx and ONNX Runtime's quantizer load lazily: the CLI imports this module's constants
    import onnx

    from calibration.cascade import Feed

log = logging.getLogger("build_engines.quantize")

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_OP_TYPES = ("MatMul", "Gemm")


@dataclass(frozen=True)
class QuantSettings:
    method: str = "minmax"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    percentile: float = 99.999
    attention_matmuls: bool = False  # also quantize MatMuls whose inputs are both activations
    # Node-name substrings kept in float. Default: the image-to-text projection (measured: docs/int8.md).
    exclude: tuple[str, ...] = ("image_to_text_projection",)

    def validate(self) -> None:
        check_choice("calibration method", self.method, CALIBRATION_METHODS)
        allowed = ("MatMul", "Gemm", "Conv", "Add", "Mul")
        unknown = [op for op in self.op_types if op not in allowed]
        if unknown or not self.op_types:
            raise MobileVLAError(f"--quantize-ops {','.join(self.op_types)}: expected a subset of {allowed}")


@dataclass(frozen=True)
class QdqSummary:
    quantize_nodes: int
    dequantize_nodes: int
    quantized_ops: dict[str, int]  # op type -> nodes with a dequantized input
    per_channel_weights: int
    per_tensor_weights: int
    nonzero_zero_points: int
    non_int8: int

    @property
    def strongly_typed_ready(self) -> bool:
        """Symmetric INT8 everywhere: what a strongly typed TensorRT network needs."""
        return self.nonzero_zero_points == 0 and self.non_int8 == 0 and self.quantize_nodes > 0

    def to_dict(self) -> dict[str, object]:
        return {"quantize_nodes": self.quantize_nodes, "dequantize_nodes": self.dequantize_nodes,
                "quantized_ops": self.quantized_ops, "per_channel_weights": self.per_channel_weights,
                "per_tensor_weights": self.per_tensor_weights, "nonzero_zero_points": self.nonzero_zero_points,
                "non_int8": self.non_int8, "strongly_typed_ready": self.strongly_typed_ready}


def check_qdq(model: onnx.ModelProto) -> QdqSummary:
    """Count Q/DQ nodes and check zero points (all 0), types (all int8) and weight granularity."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    dq_outputs = {}
    quantize = dequantize = per_channel = per_tensor = nonzero = non_int8 = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            quantize += 1
        else:
            dequantize += 1
            dq_outputs[node.output[0]] = node
        if len(node.input) > 2 and node.input[2] in initializers:
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            nonzero += int(np.any(zero_point != 0))
            non_int8 += int(zero_point.dtype != np.int8)
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:  # a weight
            scale = numpy_helper.to_array(initializers[node.input[1]])
            if scale.size > 1:
                per_channel += 1
            else:
                per_tensor += 1
    ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in node.input):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return QdqSummary(quantize, dequantize, dict(sorted(ops.items())), per_channel, per_tensor, nonzero, non_int8)


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no weight (initializer) input: attention's Q·Kᵀ and P·V."""
    initializers = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and not any(i in initializers for i in node.input)]


def quantize_part(fp32: Path, output: Path, feeds: Sequence[Feed], settings: QuantSettings,
                  external_data: bool) -> QdqSummary:
    """Calibrate on `feeds` and write the Q/DQ model to `output` (weights in `<output>.data` when external)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from calibration.cascade import FeedReader, calibration_stride

    settings.validate()
    if not feeds:
        raise MobileVLAError(f"no calibration data for {fp32.name}; the sample is empty")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(settings.op_types),  # Q/DQ on inputs only
        "QuantizeBias": False,  # TensorRT takes no INT32 Q/DQ: biases stay float and fuse into the GEMM
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        # One chunk of intermediate outputs in memory at a time, ranges merged after each (cascade.FeedReader)
        "CalibStridedMinMax": calibration_stride(len(feeds)),
    }
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    graph = onnx.load(str(fp32), load_external_data=False)
    excluded = [] if settings.attention_matmuls else activation_matmuls(graph)
    excluded += [node.name for node in graph.graph.node if any(pattern in node.name for pattern in settings.exclude)]
    started = time.perf_counter()
    quantize_static(
        str(fp32), str(output), FeedReader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(settings.op_types),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[settings.method],
        nodes_to_exclude=excluded,
        use_external_data_format=external_data,
        extra_options=extra,
    )
    summary = check_qdq(onnx.load(str(output), load_external_data=False))
    log.info("quantized %s in %.1f s: %d Q/DQ pairs on %s", fp32.name, time.perf_counter() - started,
             summary.quantize_nodes, summary.quantized_ops)
    if not summary.strongly_typed_ready:
        raise RuntimeError(f"bug: {output} has non-symmetric or non-int8 quantization: {summary.to_dict()}")
    return summary
