"""The policy backend: the three parts run as one per-frame step, with the feature history kept where the parts run.

`PolicyPipeline` talks to a backend only through `PolicyBackend`. Two implementations:
- `OnnxRuntimeBackend` (here): three ONNX Runtime runners with IO binding; vision's output array is bound as the
  trunk's input, the history lives in the head's bound input array. Nothing is allocated per frame.
- `TensorRTBackend` (`runtime/tensorrt_backend.py`): engines through pycuda on one stream, the history on the device,
  the steady-state frame replayed as a CUDA graph.

Contract, per frame: the caller writes the uint8 frame into `frame` (pinned host memory on TensorRT), then calls
`step()`. The returned arrays are the backend's own output buffers, valid until the next `step()`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from runtime.bundle import Bundle
from runtime.errors import MobileVLAError
from runtime.prompt import TextInputs
from runtime.runners import Activated, OnnxRuntimeRunner

MODEL_STAGES = ("vision", "trunk", "head")


@dataclass
class BackendOutputs:
    actions: np.ndarray  # (n, d') the head's tanh output, a view of the backend's buffer
    gripper_logits: np.ndarray | None  # (n,) for the actions_gripper head
    history_len: int  # frames in the window this chunk was computed from (1..window)


class PolicyBackend(Protocol):
    name: str  # for logs and reports, e.g. "onnxruntime-cpu (int8)", "tensorrt 10.3 (int8)"
    frame: np.ndarray  # (1, S, S, C) uint8 input buffer; write each frame here before step()
    stage_ms: dict[str, float]  # vision/trunk/head time of the last step (CUDA events on TensorRT)

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def set_text(self, text: TextInputs) -> None:
        """New trunk text inputs (the instruction changed); copied in, used from the next step on."""
        ...

    def reset(self) -> None:
        """Forget the feature history: the next step starts the LSTM from zero state (docs/design.md §2.3)."""
        ...

    def step(self) -> BackendOutputs: ...

    def __enter__(self) -> PolicyBackend: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class OnnxRuntimeBackend(Activated):
    """The three parts on ONNX Runtime runners (activated here if not yet), linked through their bound arrays."""

    def __init__(self, bundle: Bundle, runners: Mapping[str, OnnxRuntimeRunner], label: str = "fp32") -> None:
        self.bundle = bundle
        self.runners = runners
        self.window = bundle.manifest.policy.window
        providers = ",".join(p.removesuffix("ExecutionProvider").lower() for p in runners["vision"].providers)
        self.name = f"onnxruntime-{providers} ({label})"
        self.frame = np.zeros(bundle.manifest.parts["vision"].spec.inputs[0].shape, dtype=np.uint8)
        self.stage_ms = dict.fromkeys(MODEL_STAGES, 0.0)
        self._count = 0

    def activate(self) -> None:
        for runner in self.runners.values():
            runner.activate()
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        vision.link_input("frame", self.frame)
        trunk.link_input("image_embeds", vision.outputs["image_embeds"])
        self._feature = trunk.outputs["action_feature"][0]
        self._history = head.inputs["features"][0]  # (window, D): left-aligned, zero rows past history_len
        self._history_len = head.inputs["history_len"]
        self._actions = head.outputs["actions"][0]
        self._gripper = head.outputs["gripper_logits"][0] if "gripper_logits" in head.outputs else None
        self.reset()

    def deactivate(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()

    def set_text(self, text: TextInputs) -> None:
        inputs = self.runners["trunk"].inputs
        for name, value in text.feed().items():
            np.copyto(inputs[name], value)

    def reset(self) -> None:
        self._count = 0
        self._history[...] = 0.0
        self._history_len[0] = 0

    def _push_feature(self) -> None:
        if self._count < self.window:
            self._history[self._count] = self._feature
            self._count += 1
            self._history_len[0] = self._count
        else:
            self._history[:-1] = self._history[1:]  # numpy handles the overlap (memmove semantics)
            self._history[-1] = self._feature

    def step(self) -> BackendOutputs:
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        t0 = time.perf_counter()
        vision.run()
        t1 = time.perf_counter()
        trunk.run()
        self._push_feature()
        t2 = time.perf_counter()
        head.run()
        t3 = time.perf_counter()
        self.stage_ms["vision"] = (t1 - t0) * 1e3
        self.stage_ms["trunk"] = (t2 - t1) * 1e3
        self.stage_ms["head"] = (t3 - t2) * 1e3
        return BackendOutputs(self._actions, self._gripper, self._count)



def onnx_backend(bundle: Bundle, precision: str = "fp32", threads: int = 0) -> OnnxRuntimeBackend:
    """ONNX Runtime on the CPU; `int8` runs the Q/DQ graph of each part whose precision is int8, FP32 elsewhere: the
    graphs TensorRT's INT8 engines are built from, so the reference to compare them with. What `runtime` itself runs
    on ONNX Runtime is chosen per part in runtime/backend_select.py (`onnx_choice`) and opened with
    `onnx_backend_from`."""
    return onnx_backend_from(bundle, {name: bundle.part_path(name, precision) for name in bundle.manifest.parts},
                             precision, threads)


def require_cpu_graphs(bundle: Bundle) -> None:
    """Refuse a bundle slimmed for the device (`build_engines --slim`): ONNX Runtime's graphs are gone from it."""
    if bundle.manifest.target == "device":
        raise MobileVLAError(
            f"bundle {bundle.root} was slimmed for the device (build_engines --slim): its CPU graphs are gone, so "
            f"ONNX Runtime cannot run it. Run it with --backend tensorrt on the Jetson, or use the full bundle"
        )


def onnx_backend_from(bundle: Bundle, paths: Mapping[str, Path], label: str, threads: int = 0) -> OnnxRuntimeBackend:
    """ONNX Runtime on the CPU running the ONNX file `paths[part]` for each part; `label` names the choice in logs."""
    require_cpu_graphs(bundle)
    runners = {name: OnnxRuntimeRunner(paths[name], entry.spec, threads=threads)
               for name, entry in bundle.manifest.parts.items()}
    return OnnxRuntimeBackend(bundle, runners, label)
