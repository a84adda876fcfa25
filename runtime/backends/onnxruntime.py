"""ONNX Runtime: one runner per part and the backend that chains them (docs/design.md §6).

The runner binds preallocated input and output arrays once (IO binding), so the per-frame path (`run()`) allocates
nothing. The backend binds each part's output array as its consumers' input (runtime/plan.py) and keeps the
history in the window part's bound input array. Which graph each part runs (FP32, CPU INT8 form, Q/DQ) is decided
in `runtime/backends/onnx_forms.py`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Activated, BackendOutputs, frame_shape, stage_names
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
    """The bundle's parts on ONNX Runtime runners (activated here if not yet), run by the bundle's plan
    (runtime/plan.py) and linked through their bound arrays: a part's input bound to the array its source part
    writes, so nothing is copied between parts except into the history window."""

    def __init__(self, bundle: Bundle, runners: Mapping[str, OnnxRuntimeRunner], label: str = "fp32") -> None:
        self.bundle = bundle
        self.runners = runners
        self.plan = bundle.plan
        self.window = bundle.manifest.policy.window
        first = next(iter(runners.values()))
        providers = ",".join(p.removesuffix("ExecutionProvider").lower() for p in first.providers)
        self.name = f"onnxruntime-{providers} ({label})"
        self.frame = np.zeros(frame_shape(self.plan), dtype=np.uint8)
        self.stages = stage_names(self.plan)
        self.stage_ms = dict.fromkeys(self.stages, 0.0)
        self.instruction_runs = 0
        self._text: TextInputs | None = None
        self._count = 0
        self._active = False

    def activate(self) -> None:
        for runner in self.runners.values():
            runner.activate()
        self._text_inputs: list[tuple[np.ndarray, str]] = []
        self._history_lens: list[np.ndarray] = []
        for link in self.plan.links:
            runner, source = self.runners[link.consumer], link.source
            if source.kind == "frame":
                runner.link_input(link.input, self.frame)
            elif source.kind == "output":
                runner.link_input(link.input, self.runners[source.part].outputs[source.tensor])
            elif source.kind == "text":
                self._text_inputs.append((runner.inputs[link.input], source.tensor))
            elif source.kind == "history_len":
                self._history_lens.append(runner.inputs[link.input])
        window = self.plan.window_link
        self._feature = self._history = None
        self._producer = window.source.part if window is not None else None  # its output goes into the history
        if window is not None:
            self._feature = self.runners[window.source.part].outputs[window.source.tensor][0]
            self._history = self.runners[window.consumer].inputs[window.input][0]  # (window, ...) left-aligned
        final = self.runners[self.plan.final.name]
        self._actions = final.outputs["actions"][0]
        self._gripper = final.outputs["gripper_logits"][0] if "gripper_logits" in final.outputs else None
        self._frame_runs = [(name, self.runners[name]) for name in self.plan.frame_parts]
        self._active = True
        self.reset()
        if self._text is not None:
            self._run_instruction(self._text)

    def deactivate(self) -> None:
        self._active = False
        for runner in self.runners.values():
            runner.deactivate()

    def set_text(self, text: TextInputs) -> None:
        """Copy the instruction's inputs in and run the instruction parts once; their outputs stay bound."""
        self._text = text
        if self._active:
            self._run_instruction(text)

    def _run_instruction(self, text: TextInputs) -> None:
        feed = text.feed()
        for array, field_name in self._text_inputs:
            np.copyto(array, feed[field_name])
        for name in self.plan.instruction_parts:
            started = time.perf_counter()
            self.runners[name].run()
            self.stage_ms[name] = (time.perf_counter() - started) * 1e3
        if self.plan.instruction_parts:
            self.instruction_runs += 1

    def reset(self) -> None:
        self._count = 0
        if self._history is not None:
            self._history[...] = 0.0
        for array in self._history_lens:
            array[0] = 0

    def _push_feature(self) -> None:
        assert self._history is not None and self._feature is not None
        if self._count < self.window:
            self._history[self._count] = self._feature
            self._count += 1
            for array in self._history_lens:
                array[0] = self._count
        else:
            self._history[:-1] = self._history[1:]  # numpy handles the overlap (memmove semantics)
            self._history[-1] = self._feature

    def step(self) -> BackendOutputs:
        producer = self._producer
        for name, runner in self._frame_runs:
            started = time.perf_counter()
            runner.run()
            if name == producer:
                self._push_feature()
            self.stage_ms[name] = (time.perf_counter() - started) * 1e3
        return BackendOutputs(self._actions, self._gripper, self._count if producer is not None else 1)


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
