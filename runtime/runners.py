"""The Runner protocol (DESIGN §6) and its ONNX Runtime implementation.

A runner allocates in `activate`, runs `infer(feed) -> outputs` every frame and frees in `deactivate`; it is a
context manager. The TensorRT implementation joins it in issue 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from runtime.errors import MobileVLAError
from runtime.specs import PartSpec


class Runner(Protocol):
    spec: PartSpec

    def activate(self) -> None: ...

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class OnnxRuntimeRunner:
    """Runs one bundle part with ONNX Runtime (CPU by default)."""

    def __init__(self, path: Path, spec: PartSpec, providers: list[str] | None = None, threads: int = 0) -> None:
        self.path = Path(path)
        self.spec = spec
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self._session: Any = None
        self._output_names = spec.output_names()

    def activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise MobileVLAError(
                f"ONNX Runtime cannot load {self.path} ({exc}); the bundle file is damaged or was built by an "
                f"incompatible exporter: rebuild it with build_engines"
            ) from exc
        self._check_io()

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

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError(f"bug: runner for {self.spec.name} used before activate()")
        outputs = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, outputs, strict=True))

    def deactivate(self) -> None:
        self._session = None

    def __enter__(self) -> OnnxRuntimeRunner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()
