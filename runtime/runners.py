"""The Runner protocol (docs/design.md §6) and its ONNX Runtime implementation.

A runner allocates in `activate`, runs `infer(feed) -> outputs` every frame and frees in `deactivate`; it is a
context manager. The ONNX Runtime runner binds preallocated input and output arrays once (IO binding), so the
per-frame path (`run()`) allocates nothing; the TensorRT runner is in `runtime/tensorrt_backend.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np

from runtime.errors import MobileVLAError
from runtime.specs import PartSpec

Self = TypeVar("Self", bound="Activated")


class Activated:
    """`with thing:` activates it and deactivates it on the way out (runners and backends)."""

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        raise NotImplementedError

    def __enter__(self: Self) -> Self:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()


class Runner(Protocol):
    spec: PartSpec

    def activate(self) -> None: ...

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


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

