"""The contracts every backend meets (docs/design.md §6): `Runner` (one part), `PolicyBackend` (the bundle's parts,
run by its plan, as one per-frame step), `Activated` (allocate in `activate`, free in `deactivate`, usable as a
context manager).

`PolicyPipeline` talks to a backend only through `PolicyBackend`. Contract, per frame: the caller writes the uint8
frame into `frame` (pinned host memory on TensorRT), then calls `step()`. The returned arrays are the backend's own
output buffers, valid until the next `step()`. Implementations: `runtime/backends/onnxruntime.py` and
`runtime/backends/tensorrt/`; `runtime/backends/select.py` decides which one runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar

import numpy as np

from runtime.errors import MobileVLAError
from runtime.plan import RunPlan
from runtime.prompt import TextInputs
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


@dataclass
class BackendOutputs:
    actions: np.ndarray  # (n, d') the head's tanh output, a view of the backend's buffer
    gripper_logits: np.ndarray | None  # (n,) for the actions_gripper head
    history_len: int  # frames in the window this chunk was computed from (1..window)


def stage_names(plan: RunPlan) -> tuple[str, ...]:
    """The timed stages: every part, instruction parts included (their time is that of their last run)."""
    return tuple(p.name for p in plan.parts)


def frame_shape(plan: RunPlan) -> tuple[int, ...]:
    """The (1, S, S, C) uint8 frame the plan's `frame` sources read."""
    for link in plan.links:
        if link.source.kind == "frame":
            return next(t.shape for t in plan.spec(link.consumer).inputs if t.name == link.input)
    raise MobileVLAError("the bundle's parts read no camera frame; rebuild it with build_engines")


class PolicyBackend(Protocol):
    name: str  # for logs and reports, e.g. "onnxruntime-cpu (int8)", "tensorrt 10.3 (int8)"
    frame: np.ndarray  # (1, S, S, C) uint8 input buffer; write each frame here before step()
    stages: tuple[str, ...]  # the bundle's parts in run order (runtime/plan.py)
    stage_ms: dict[str, float]  # each part's time in its last run (CUDA events on TensorRT)
    instruction_runs: int  # how often the instruction parts ran (once per set_text when the bundle has any)

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def set_text(self, text: TextInputs) -> None:
        """New text inputs (the instruction changed): copied in, the instruction parts run once, used from the next
        step on."""
        ...

    def reset(self) -> None:
        """Forget the feature history: the next step starts the LSTM from zero state (docs/design.md §2.3)."""
        ...

    def step(self) -> BackendOutputs: ...

    def __enter__(self) -> PolicyBackend: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
