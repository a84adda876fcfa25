"""`build_engines --plan`: what the three parts cost on each Jetson Orin, from the model's shapes alone.

model.py counts FLOPs, weights and activations per part; devices.py holds the modules' public figures (each cited);
estimate.py turns them into floor latencies and memory footprints; report.py prints the tables and the JSON;
graph.py counts an exported ONNX graph's FLOPs, the independent check. Nothing here imports torch, transformers or
(outside graph.py, lazily) onnx: the plan takes seconds and needs no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from build_engines.plan.devices import DEVICES, Device
from build_engines.plan.estimate import DevicePlan, plan_device
from build_engines.plan.model import ModelDims, PartCount, part_counts


@dataclass(frozen=True)
class Plan:
    dims: ModelDims
    parts: dict[str, PartCount]
    devices: tuple[DevicePlan, ...]
    workspace_mb: int | None = None
    projection_int8: bool = False
    graph_flops: dict[str, int] | None = None  # part -> FLOPs counted in its exported graph, when one was at hand
    origin: str = "the model configuration"


def make_plan(dims: ModelDims, workspace_mb: int | None = None, projection_int8: bool = False,
              graph_flops: dict[str, int] | None = None, origin: str = "the model configuration",
              devices: tuple[Device, ...] = DEVICES) -> Plan:
    parts = part_counts(dims, projection_int8)
    plans = tuple(plan_device(parts, device, workspace_mb) for device in devices)
    return Plan(dims, parts, plans, workspace_mb, projection_int8, graph_flops, origin)
