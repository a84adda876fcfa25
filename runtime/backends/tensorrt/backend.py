"""The TensorRT backend (docs/design.md §3, §4, §6): the bundle's engines through pycuda, one stream, the history on
the GPU.

Per frame, all on one CUDA stream, then one synchronize; the parts and their links are the bundle's plan
(runtime/plan.py), e.g. for Kosmos-2 + LSTM:

    [shift history] -> H2D frame (pinned) -> vision -> trunk -> head -> D2H actions (pinned)

- Each part's output buffer is bound as its consumers' input. The window's producer (the trunk) writes its feature
  straight into the window part's buffer, which *is* the history `(1, window, D)`; `history_len` lives on the
  device too. Text inputs are uploaded and the instruction parts run once per instruction (`set_text`), never per
  frame; their outputs stay where the per-frame parts read them.
- History rule (docs/design.md §2.3, `runtime/specs.py`): the features of the last min(t, window) frames,
  left-aligned, zero rows past history_len. While filling, the producer's output address is slot t; once full, the
  window is shifted left by one row on the device (through a scratch buffer: overlapping cuMemcpy is undefined)
  and the producer writes the last slot. `history_plan` (history.py) is that rule as a pure function. A bundle
  without a window has fixed addresses from the first frame.
- Steady state (window full) has fixed addresses, so after one plain warm-up frame (TensorRT: enqueue once before
  capturing, to flush deferred updates) the whole frame (shift, H2D, every `execute_async_v3`, D2H and the stage
  events) is captured as one CUDA graph (graph.py) and replayed every frame. If capture fails (TensorRT refuses, or
  the driver lacks the calls) the backend logs once and keeps plain enqueues; `graph` and `name` say which path
  runs.
  `reset()` drops the graph: the refill phase enqueues with changing addresses, and the graph is captured again
  once the window is full.
- `stage_ms` comes from CUDA events recorded between the stages, on both paths: inside a graph they are external
  event-record nodes (CUDA >= 11.1), replayed with the graph. The first part's time includes the shift and the H2D
  copies, the last part's the D2H copies.
- One engine per part: `runtime/backends/tensorrt/runner.py`; which engines: `engines.py` beside it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends import cuda as cuda_layer
from runtime.backends.base import Activated, BackendOutputs, frame_shape, stage_names
from runtime.backends.cuda import CudaError, PrimaryContext, cuda_call, device_command, import_pycuda
from runtime.backends.tensorrt.engines import EngineChoice, EngineTensor, engine_choices, probe
from runtime.backends.tensorrt.graph import capture_graph
from runtime.backends.tensorrt.history import (
    NO_HISTORY,
    HistoryPlan,
    direct_history_writes,
    history_plan,
    shift_rows,
)
from runtime.backends.tensorrt.runner import TENSOR_ALIGNMENT, TensorRTRunner, release_after_failure
from runtime.bundle import Bundle
from runtime.errors import MobileVLAError
from runtime.prompt import TextInputs

if TYPE_CHECKING:
    from runtime.backends.base import PolicyBackend, Runner

log = logging.getLogger("runtime.tensorrt")


class TensorRTBackend(Activated):
    """`runtime.backends.base.PolicyBackend` on TensorRT engines (see the module docstring for the per-frame plan).

    `frame` is a pinned host array once `activate()` has run (a plain array before): write each frame into
    `backend.frame` after activation. `graph` is `pending` (not yet captured), `captured`, or `off`
    (`graph_note` says why); `name` carries it into logs and benchmark reports.
    """

    def __init__(self, bundle: Bundle, precision: str, engines: dict[str, EngineChoice], tensorrt_version: str,
                 verify: bool = True, use_graph: bool = True) -> None:
        self.bundle = bundle
        self.precision = precision
        self.engines = engines
        self.tensorrt_version = tensorrt_version
        self.verify = verify
        self.plan = bundle.plan
        self.window = bundle.manifest.policy.window
        self.frame = np.zeros(frame_shape(self.plan), dtype=np.uint8)
        self.stages = stage_names(self.plan)
        self.stage_ms = dict.fromkeys(self.stages, 0.0)
        self.instruction_runs = 0
        self.graph = "pending" if use_graph else "off"
        self.graph_note = "" if use_graph else "disabled by the caller"
        self.name = ""
        self._relabel()
        self.runners: dict[str, TensorRTRunner] = {}
        self._text: TextInputs | None = None
        self._count = 0  # frames in the window now (history_len on the device)
        self._warm = False  # a plain steady-state frame has run since the last reset: the next one may be captured
        self._cuda: Any = None
        self._driver: Any = None
        self._stream: Any = None
        self._cuda_context = PrimaryContext()
        self._events: list[int] = []
        self._exec = 0  # the instantiated CUDA graph, 0 when none
        self._scratch: Any = None
        self._host: dict[str, np.ndarray] = {}
        self._actions = np.zeros(0, np.float32)
        self._gripper: np.ndarray | None = None
        self._active = False

    def _relabel(self) -> None:
        kinds = {choice.precision for choice in self.engines.values()}  # e.g. int8 asked, some parts fell back to fp16
        parts = kinds.pop() if len(kinds) == 1 else ", ".join(
            f"{name} {choice.precision}" for name, choice in self.engines.items())
        self.name = f"tensorrt {self.tensorrt_version} ({parts}, cuda graph {self.graph})"

    # activation

    def activate(self) -> None:
        if self._active:
            return
        cuda = import_pycuda()
        if cuda is None:
            raise MobileVLAError("pycuda is not installed: `pip install pycuda` (see docs/jetson.md)")
        self._cuda = cuda
        self._cuda_context.push()
        try:
            self._stream = cuda_call("cuStreamCreate", cuda.Stream)
            self._driver = cuda_layer.load_driver()  # looked up at call time: tests put a fake driver here
            if self.graph == "pending" and self._driver.graph_support:
                self._graph_off(self._driver.graph_support)
            manifest = self.bundle.manifest
            for name in self.stages:
                choice = self.engines[name]
                self.runners[name] = TensorRTRunner(
                    choice.path, manifest.parts[name].spec, self._stream, choice.sha256 if self.verify else None,
                    choice.size_bytes, device_command(self.bundle.root, force=True))
                self.runners[name].activate()
            self._link()
            self._allocate_host()
            self._events = [self._driver.event_create() for _ in range(len(self.plan.frame_parts) + 1)]
            self._active = True
            if self._text is not None:
                self._upload_text(self._text)
            self.reset()
        except BaseException:
            release_after_failure(self.deactivate)
            raise
        log.info("%s: engines %s", self.name,
                 ", ".join(f"{c.part}={c.path.name}" for c in self.engines.values()))

    def _link(self) -> None:
        """Each output feeds its consumers; the window part's buffer is the history its producer writes into."""
        for link in self.plan.links:
            if link.source.kind == "output":
                producer = self.runners[link.source.part]
                self.runners[link.consumer].bind(link.input, producer.address(link.source.tensor))
        window = self.plan.window_link
        self._row_bytes, self._direct = 0, True
        if window is None:
            return
        features = self.runners[window.consumer].tensors[window.input]
        self._row_bytes = features.nbytes // self.window
        self._direct = direct_history_writes(self._row_bytes)
        if not self._direct:
            log.info("history rows of %d bytes are not %d-byte aligned: the %s part writes its own buffer and a copy "
                     "moves it into the history", self._row_bytes, TENSOR_ALIGNMENT, window.source.part)
        if self.window > 1:
            size = (self.window - 1) * self._row_bytes
            self._scratch = cuda_call(f"cuMemAlloc(history scratch, {size} B)", self._cuda.mem_alloc, size)

    def _pinned(self, tensor: EngineTensor) -> np.ndarray:
        array: np.ndarray = cuda_call(f"cuMemHostAlloc({tensor.name})", self._cuda.pagelocked_zeros, tensor.shape,
                                      np.dtype(tensor.dtype))
        return array

    def _allocate_host(self) -> None:
        """Pinned host arrays (`part.input`, `part.output`): async copies need them, and a captured graph
        reads/writes them on every replay."""
        self._host = {}
        self._uploads: list[tuple[str, str, str]] = []  # (part, input, source kind/field) copied from the host
        for link in self.plan.links:
            if link.source.kind in ("frame", "text", "history_len"):
                tensor = self.runners[link.consumer].tensors[link.input]
                self._host[f"{link.consumer}.{link.input}"] = self._pinned(tensor)
                self._uploads.append((link.consumer, link.input, link.source.tensor or link.source.kind))
        frame_key = next(f"{c}.{i}" for c, i, kind in self._uploads if kind == "frame")
        self.frame = self._host[frame_key]
        final = self.runners[self.plan.final.name]
        for spec in final.spec.outputs:
            self._host[spec.name] = self._pinned(final.tensors[spec.name])
        self._actions = self._host["actions"][0]
        self._gripper = self._host["gripper_logits"][0] if "gripper_logits" in self._host else None

    def deactivate(self) -> None:
        """Free everything; every step is attempted, the first CUDA error is raised at the end."""
        errors: list[CudaError] = []

        def attempt(action: Any, *args: Any) -> None:
            try:
                action(*args)
            except CudaError as exc:
                errors.append(exc)

        if self._stream is not None:
            attempt(cuda_call, "cuStreamSynchronize", self._stream.synchronize)
        if self._exec:
            attempt(self._driver.exec_destroy, self._exec)
            self._exec = 0
        for event in self._events:
            attempt(self._driver.event_destroy, event)
        self._events = []
        for runner in self.runners.values():
            attempt(runner.deactivate)
        self.runners = {}
        if self._scratch is not None:
            attempt(cuda_call, "cuMemFree(history scratch)", self._scratch.free)
            self._scratch = None
        # Ordinary copies: the pinned buffers must be freed while the context is current, so no view may outlive it.
        self.frame = np.array(self.frame)
        self._actions = np.array(self._actions)
        self._gripper = None if self._gripper is None else np.array(self._gripper)
        self._host = {}
        self._stream = None
        attempt(self._cuda_context.pop)
        self._active = False
        if errors:
            raise errors[0]

    # text and history

    def set_text(self, text: TextInputs) -> None:
        """Upload the trunk's text inputs into their device buffers (same addresses: a captured graph stays valid)."""
        self._text = text
        if self._active:
            self._upload_text(text)

    def _upload_text(self, text: TextInputs) -> None:
        """Upload the text inputs, then run the instruction parts once; their outputs stay bound."""
        feed = text.feed()
        for part, name, kind in self._uploads:
            if kind not in feed:
                continue
            host, value = self._host[f"{part}.{name}"], feed[kind]
            if value.shape != host.shape:
                raise MobileVLAError(f"text input {kind} has shape {value.shape}; the {part} engine takes "
                                     f"{host.shape}. The bundle's prompt settings and its engines disagree: rebuild "
                                     f"the bundle")
            np.copyto(host, value, casting="unsafe")  # int64 -> int32 on TensorRT 8.x; token ids fit
            cuda_call(f"cuMemcpyHtoDAsync({part}.{name})", self._cuda.memcpy_htod_async,
                      self.runners[part].address(name), host, self._stream)
        for part in self.plan.instruction_parts:
            started = time.perf_counter()
            self.runners[part].enqueue()
            cuda_call("cuStreamSynchronize", self._stream.synchronize)
            self.stage_ms[part] = (time.perf_counter() - started) * 1e3
        if self.plan.instruction_parts:
            self.instruction_runs += 1
        cuda_call("cuStreamSynchronize", self._stream.synchronize)

    def reset(self) -> None:
        """Zero the device history and history_len; the refill phase changes addresses, so the graph is dropped."""
        self._count = 0
        self._warm = False
        window = self.plan.window_link
        if not self._active or window is None:
            return
        consumer = self.runners[window.consumer]
        lengths = [name for part, name, kind in self._uploads if kind == "history_len" and part == window.consumer]
        for name in [window.input, *lengths]:
            cuda_call(f"cuMemsetD8Async({name})", self._cuda.memset_d8_async, consumer.address(name), 0,
                      consumer.tensors[name].nbytes, self._stream)
        cuda_call("cuStreamSynchronize", self._stream.synchronize)
        self._drop_graph()

    def _drop_graph(self) -> None:
        if self._exec:
            executable, self._exec = self._exec, 0
            self._driver.exec_destroy(executable)
        if self.graph == "captured":
            self.graph = "pending"
            self._relabel()

    def _graph_off(self, why: str) -> None:
        self.graph, self.graph_note = "off", why
        self._relabel()
        log.warning("CUDA graph off, plain enqueues every frame: %s", why)

    # the frame

    def step(self) -> BackendOutputs:
        if not self._active:
            raise RuntimeError("bug: TensorRTBackend.step() before activate()")
        windowed = self.plan.window_link is not None
        plan = history_plan(self._count, self.window) if windowed else NO_HISTORY
        steady = plan.steady or not windowed
        if steady and self._exec:
            self._driver.launch(self._exec, self._stream.handle)
        elif steady and self._warm and self.graph == "pending" and self._capture(plan):
            pass  # captured and launched
        else:
            self._enqueue(plan, capturing=False)
            self._warm = steady
        cuda_call("cuStreamSynchronize", self._stream.synchronize)
        self._count = plan.new_len if windowed else 0
        for name, start, end in zip(self.plan.frame_parts, self._events, self._events[1:], strict=False):
            self.stage_ms[name] = self._driver.event_elapsed_ms(start, end)
        return BackendOutputs(self._actions, self._gripper, plan.new_len)

    def _enqueue(self, plan: HistoryPlan, capturing: bool) -> None:
        """One frame's work on the stream, in order; while capturing, the same calls become graph nodes."""
        cuda, stream, handle = self._cuda, self._stream, self._stream.handle
        window = self.plan.window_link
        history = self.runners[window.consumer].address(window.input) if window is not None else 0
        self._driver.event_record(self._events[0], handle, capturing)
        if plan.shift and self._scratch is not None:  # window 1: the producer overwrites the only row
            shift_rows(self._cuda, stream, history, int(self._scratch), self.window - 1, self._row_bytes)
        for part, name, kind in self._uploads:
            if kind == "frame" or (kind == "history_len" and not plan.shift):  # history_len changes while filling
                if kind == "history_len":
                    self._host[f"{part}.{name}"][0] = plan.new_len
                cuda_call(f"cuMemcpyHtoDAsync({part}.{name})", cuda.memcpy_htod_async,
                          self.runners[part].address(name), self._host[f"{part}.{name}"], stream)
        for index, name in enumerate(self.plan.frame_parts):
            runner = self.runners[name]
            if window is not None and name == window.source.part:
                self._write_feature(runner, window.source.tensor, history + plan.write_slot * self._row_bytes)
            else:
                runner.enqueue()
            if name == self.plan.final.name:
                for spec in runner.spec.outputs:
                    cuda_call(f"cuMemcpyDtoHAsync({spec.name})", cuda.memcpy_dtoh_async, self._host[spec.name],
                              runner.address(spec.name), stream)
            self._driver.event_record(self._events[index + 1], handle, capturing)

    def _write_feature(self, producer: TensorRTRunner, output: str, slot: int) -> None:
        """Run the window's producer with its output landing in history row `slot` (bound there, or copied)."""
        if self._direct:
            if producer.address(output) != slot:
                producer.bind(output, slot)
            producer.enqueue()
        else:
            producer.enqueue()
            cuda_call("cuMemcpyDtoDAsync(feature -> history)", self._cuda.memcpy_dtod_async, slot,
                      producer.own_address(output), self._row_bytes, self._stream)

    def _capture(self, plan: HistoryPlan) -> bool:
        """Capture this steady-state frame as one CUDA graph and launch it; False (graph off) if refused."""
        handle = self._stream.handle
        self._exec, refused = capture_graph(self._driver, handle, lambda: self._enqueue(plan, capturing=True))
        if refused is not None:
            self._graph_off(refused)
            return False
        self._driver.launch(self._exec, handle)
        self.graph, self.graph_note = "captured", ""
        self._relabel()
        log.info("steady-state frame captured as one CUDA graph; replayed from now on")
        return True


def open_tensorrt_backend(bundle: Bundle, precision: str, verify: bool = True,
                          use_graph: bool = True) -> TensorRTBackend:
    """The TensorRT backend for `bundle` (not yet activated), or MobileVLAError saying why it cannot run here.

    Engine sizes are checked here; with `verify`, each engine's sha256 is checked when `activate()` reads it (the
    file is read once, for both).
    """
    found = probe(bundle, precision)
    if found.reason is not None:
        raise MobileVLAError(f"the TensorRT backend cannot run bundle {bundle.root}: {found.reason}")
    return TensorRTBackend(bundle, precision, engine_choices(bundle, precision), found.version, verify, use_graph)


if TYPE_CHECKING:  # mypy checks that both classes satisfy the protocols they implement

    def _implements(runner: TensorRTRunner, backend: TensorRTBackend) -> tuple[Runner, PolicyBackend]:
        return runner, backend
