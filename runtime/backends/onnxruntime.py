"""ONNX Runtime: one runner per part and the backend that chains them (docs/design.md §6).

The runner binds preallocated input and output arrays once (IO binding), so the per-frame path (`run()`) allocates
nothing. The backend binds vision's output array as the trunk's input and keeps the history in the head's bound
input array. Which graph each part runs (FP32, CPU INT8 form, Q/DQ) is decided in `runtime/backends/onnx_forms.py`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import MODEL_STAGES, Activated, BackendOutputs
from runtime.bundle import Bundle
from runtime.errors import MobileVLAError
from runtime.prompt import TextInputs
from runtime.specs import PartSpec


class OnnxRuntimeRunner(Activated):
    """Runs one bundle part with ONNX Runtime (CPU by default) through IO binding.

    `inputs` and `outputs` are arrays allocated once in `activate` and bound to the session: write inputs in place,
    call `run()`, read outputs in place. `link_input` binds another runner's output array as an input, so vision's
    embeds feed the trunk without a copy. `infer(feed)` copies in and returns copies (for one-off calls).
    """

    def __init__(self, path: Path, spec: PartSpec, providers: list[str] | None = None, threads: int = 0) -> None:
        self.path = Path(path)
        self.spec = spec
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self._session: Any = None
        self._binding: Any = None
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self._output_names = spec.output_names()

    @property
    def active(self) -> bool:
        return self._session is not None

    def activate(self) -> None:
        """Create the session and bind freshly allocated arrays; a no-op when already active."""
        if self.active:
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        # Spinning pool threads keep cores busy between frames and steal them from capture and the control loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise MobileVLAError(
                f"ONNX Runtime cannot load {self.path} ({exc}); the bundle file is damaged or was built by an "
                f"incompatible exporter: rebuild it with build_engines"
            ) from exc
        self._check_io()
        self._binding = self._session.io_binding()
        self.inputs = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in self.spec.inputs}
        self.outputs = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in self.spec.outputs}
        for name, array in self.inputs.items():
            self._bind("input", name, array)
        for name, array in self.outputs.items():
            self._bind("output", name, array)

    def _bind(self, kind: str, name: str, array: np.ndarray) -> None:
        if not array.flags.c_contiguous:
            raise RuntimeError(f"bug: {self.spec.name} {kind} {name} bound to a non-contiguous array")
        bind = self._binding.bind_input if kind == "input" else self._binding.bind_output
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def link_input(self, name: str, array: np.ndarray) -> None:
        """Bind `array` (e.g. another runner's output) as input `name`; the caller keeps it alive and in place."""
        self._require_active()
        expected = next(t for t in self.spec.inputs if t.name == name)
        if array.shape != expected.shape or array.dtype != np.dtype(expected.dtype):
            raise RuntimeError(f"bug: linking {array.dtype}{array.shape} to {self.spec.name}.{name} "
                               f"({expected.dtype}{expected.shape})")
        self.inputs[name] = array
        self._bind("input", name, array)

    def _check_io(self) -> None:
        session_inputs = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        session_outputs = {o.name for o in self._session.get_outputs()}
        expected_inputs = {t.name: t.shape for t in self.spec.inputs}
        if set(session_inputs) != set(expected_inputs) or not set(self._output_names) <= session_outputs:
            raise MobileVLAError(
                f"{self.path} has inputs {sorted(session_inputs)} and outputs {sorted(session_outputs)}; the "
                f"manifest's {self.spec.name} part expects inputs {sorted(expected_inputs)} and outputs "
                f"{self._output_names}. Rebuild the bundle"
            )
        for name, shape in expected_inputs.items():
            if session_inputs[name] != shape:
                raise MobileVLAError(
                    f"{self.path} input {name} has shape {session_inputs[name]}, the manifest says {shape}; rebuild"
                )

    def _require_active(self) -> None:
        if self._session is None:
            raise RuntimeError(f"bug: runner for {self.spec.name} used before activate()")

    def run(self) -> None:
        """One execution on the bound arrays (the per-frame path: no allocation)."""
        self._session.run_with_iobinding(self._binding)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._require_active()
        for name, value in feed.items():
            np.copyto(self.inputs[name], np.asarray(value).reshape(self.inputs[name].shape))
        self.run()
        return {name: array.copy() for name, array in self.outputs.items()}

    def deactivate(self) -> None:
        self._session = None
        self._binding = None
        self.inputs = {}
        self.outputs = {}


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
    on ONNX Runtime is chosen per part in runtime/backends/onnx_forms.py (`onnx_choice`) and opened with
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
