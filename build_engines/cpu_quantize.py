"""How one part's CPU INT8 form is written and checked: `quantize_dynamic` with the build's settings, and the
integer kernels ONNX Runtime's optimized graph keeps (build_engines/cpu_int8.py gates and times the forms).

Weights: `auto` picks int8 (u8×s8 kernels; measured 1.6-2x faster than uint8 with AVX-512 VNNI on the mid preset),
and uint8 on a CPU whose u8×s8 kernels clip int8 weights' sums (x86 without VNNI, runtime/cpu_int8.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from build_engines.quantize import activation_matmuls
from runtime.cpu_int8 import WEIGHT_TYPES, CpuHost
from runtime.errors import MobileVLAError, check_range
from runtime.preprocess import check_choice

SETTING_WEIGHT_TYPES = ("auto", *WEIGHT_TYPES)
# Op types of ONNX Runtime's integer kernels, as they appear in its optimized graph (fused) or in the saved one.
INTEGER_KERNELS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul",
                   "DynamicQuantizeLSTM", "ConvInteger", "QLinearConv")


@dataclass(frozen=True)
class CpuInt8Settings:
    # auto: int8 (measured faster than uint8 with VNNI, module docstring), uint8 where this CPU's kernels clip int8
    weight_type: str = "auto"
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # "LSTM" also works (DynamicQuantizeLSTM): module docstring
    per_channel: bool = True
    timing_runs: int = 15  # interleaved FP32/INT8 pairs, at least (fewer only when the budget runs out)
    timing_min_s: float = 1.0  # keep pairing until this long: a part that runs in a millisecond needs many runs
    timing_budget_s: float = 30.0  # stop after this long, once `timing_min_runs` pairs are in
    timing_min_runs: int = 3
    timing_warmup: int = 2  # untimed runs of each session first (first runs allocate)

    def weights_on(self, host: CpuHost) -> str:
        if self.weight_type != "auto":
            return self.weight_type
        return "uint8" if host.saturates_int8 else "int8"

    def validate(self) -> None:
        check_choice("CPU INT8 weight type", self.weight_type, SETTING_WEIGHT_TYPES)
        unknown = [op for op in self.op_types if op not in ("MatMul", "Gemm", "LSTM", "Conv")]
        if unknown or not self.op_types:
            raise MobileVLAError(f"CPU INT8 op types {self.op_types}: expected a subset of MatMul, Gemm, LSTM, Conv")
        check_range("CPU INT8 timing runs", self.timing_runs, 1)
        check_range("CPU INT8 timing minimum runs", self.timing_min_runs, 1, self.timing_runs)
        check_range("CPU INT8 timing minimum seconds", self.timing_min_s, 0.0)
        check_range("CPU INT8 timing budget seconds", self.timing_budget_s, 0.0, low_open=True)
        check_range("CPU INT8 timing warm-up runs", self.timing_warmup, 0)


def integer_kernels(path: Path) -> dict[str, int]:
    """Integer-kernel nodes in ONNX Runtime's optimized graph of `path` (on this CPU): proof that the form runs
    integer GEMMs, not dequantize-and-FP32 (what became of the Q/DQ graphs here)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="cpu-int8-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3  # its warning that the saved graph is hardware-specific: we only count nodes
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        counts = Counter(node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node)
    return {op: counts[op] for op in INTEGER_KERNELS if counts[op]}


class QuantizerChatter(logging.Filter):
    """ONNX Runtime's quantizer logs through the root logger: an INFO line per unquantized tensor (hundreds at real
    size) and advice to pre-process that is for static quantization. Dropped while it runs; its warnings stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname or "quantization" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and not record.getMessage().startswith("Please consider to run pre")


def quantize_cpu_part(fp32: Path, output: Path, settings: CpuInt8Settings, external_data: bool,
                      keep_float: Sequence[str] = (), weight_type: str = "int8") -> float:
    """Write the dynamic-quantized form of `fp32` to `output` (weights in `<output>.data` when external); seconds.
    Nodes whose names contain a `keep_float` pattern stay float (`--keep-float`, as in the Q/DQ graphs)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings.validate()
    started = time.perf_counter()
    graph = onnx.load(str(fp32), load_external_data=False)
    # Q·Kᵀ and P·V: no weights to shrink, accuracy to lose; the kept-float nodes: measured (docs/int8.md)
    excluded = activation_matmuls(graph)
    excluded += [node.name for node in graph.graph.node if any(pattern in node.name for pattern in keep_float)]
    chatter = QuantizerChatter()
    logging.getLogger().addFilter(chatter)
    try:
        quantize_dynamic(
            str(fp32), str(output),
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
            nodes_to_exclude=excluded,
            use_external_data_format=external_data,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(chatter)
    return time.perf_counter() - started
