"""The TensorRT backend (docs/design.md §3, §4, §6): the bundle's engines through pycuda, one stream, the history on
the GPU.

Per frame, all on one CUDA stream, then one synchronize:

    [shift history] -> H2D frame (pinned) -> vision -> trunk -> head -> D2H actions (pinned)

- Vision's output buffer is bound as the trunk's input; the trunk writes its feature straight into the head's
  `features` buffer, which *is* the history `(1, window, D)`; `history_len` lives on the device too. Text inputs are
  uploaded once per instruction (`set_text`), never per frame.
- History rule (docs/design.md §2.3, `runtime/specs.py`): the features of the last min(t, window) frames,
  left-aligned, zero rows past history_len. While filling, the trunk's output address is slot t; once full, the
  window is shifted left by one row on the device (through a scratch buffer: overlapping cuMemcpy is undefined)
  and the trunk writes the last slot. `history_plan` (history.py) is that rule as a pure function.
- Steady state (window full) has fixed addresses, so after one plain warm-up frame (TensorRT: enqueue once before
  capturing, to flush deferred updates) the whole frame (shift, H2D, three `execute_async_v3`, D2H and the stage
  events) is captured as one CUDA graph and replayed every frame. Capture goes through the CUDA driver (ctypes,
  `runtime/backends/cuda.py`): released pycuda has no graph API. If capture fails (TensorRT refuses, or the driver
  lacks the calls) the backend logs once and keeps plain enqueues; `graph` and `name` say which path runs.
  `reset()` drops the graph: the refill phase enqueues with changing addresses, and the graph is captured again
  once the window is full.
- `stage_ms` comes from CUDA events recorded between the stages, on both paths: inside a graph they are external
  event-record nodes (CUDA >= 11.1), replayed with the graph. vision = shift + H2D + vision; head = head + D2H.
- One engine per part: `runtime/backends/tensorrt/runner.py`; which engines: `engines.py` beside it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends import cuda as cuda_layer
from runtime.backends.base import MODEL_STAGES, Activated, BackendOutputs
from runtime.backends.cuda import CUDA_SUCCESS, CudaError, PrimaryContext, cuda_call, device_command, import_pycuda
from runtime.backends.tensorrt.engines import EngineChoice, EngineTensor, engine_choices, probe
from runtime.backends.tensorrt.history import HistoryPlan, direct_history_writes, history_plan
from runtime.backends.tensorrt.runner import TENSOR_ALIGNMENT, TensorRTRunner, release_after_failure
from runtime.bundle import Bundle
from runtime.errors import MobileVLAError
from runtime.prompt import TextInputs

if TYPE_CHECKING:
    from runtime.backends.base import PolicyBackend, Runner

log = logging.getLogger("runtime.tensorrt")
EVENTS = 4  # start, after vision, after trunk, after head


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
        parts = bundle.manifest.parts
        self.window = bundle.manifest.policy.window
        self.frame = np.zeros(parts["vision"].spec.inputs[0].shape, dtype=np.uint8)
        self.stage_ms = dict.fromkeys(MODEL_STAGES, 0.0)
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
            for name in MODEL_STAGES:
                choice = self.engines[name]
                self.runners[name] = TensorRTRunner(
                    choice.path, manifest.parts[name].spec, self._stream, choice.sha256 if self.verify else None,
                    choice.size_bytes, device_command(self.bundle.root, force=True))
                self.runners[name].activate()
            self._link()
            self._allocate_host()
            self._events = [self._driver.event_create() for _ in range(EVENTS)]
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
        """Vision's output feeds the trunk; the head's features buffer is the history the trunk writes into."""
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        trunk.bind("image_embeds", vision.address("image_embeds"))
        features = head.tensors["features"]
        self._row_bytes = features.nbytes // self.window
        self._direct = direct_history_writes(self._row_bytes)
        if not self._direct:
            log.info("history rows of %d bytes are not %d-byte aligned: the trunk writes its own buffer and a copy "
                     "moves it into the history", self._row_bytes, TENSOR_ALIGNMENT)
        if self.window > 1:
            size = (self.window - 1) * self._row_bytes
            self._scratch = cuda_call(f"cuMemAlloc(history scratch, {size} B)", self._cuda.mem_alloc, size)

    def _pinned(self, tensor: EngineTensor) -> np.ndarray:
        array: np.ndarray = cuda_call(f"cuMemHostAlloc({tensor.name})", self._cuda.pagelocked_zeros, tensor.shape,
                                      np.dtype(tensor.dtype))
        return array

    def _allocate_host(self) -> None:
        """Pinned host arrays: async copies need them, and a captured graph reads/writes them on every replay."""
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        self.frame = self._pinned(vision.tensors["frame"])
        self._host = {"history_len": self._pinned(head.tensors["history_len"])}
        for spec in trunk.spec.inputs:
            if spec.name != "image_embeds":
                self._host[spec.name] = self._pinned(trunk.tensors[spec.name])
        for spec in head.spec.outputs:
            self._host[spec.name] = self._pinned(head.tensors[spec.name])
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
        trunk = self.runners["trunk"]
        for name, value in text.feed().items():
            host = self._host[name]
            if value.shape != host.shape:
                raise MobileVLAError(f"text input {name} has shape {value.shape}; the trunk engine takes {host.shape}. "
                                     f"The bundle's prompt settings and its engines disagree: rebuild the bundle")
            np.copyto(host, value, casting="unsafe")  # int64 -> int32 on TensorRT 8.x; token ids fit
            cuda_call(f"cuMemcpyHtoDAsync({name})", self._cuda.memcpy_htod_async, trunk.address(name), host,
                      self._stream)
        cuda_call("cuStreamSynchronize", self._stream.synchronize)

    def reset(self) -> None:
        """Zero the device history and history_len; the refill phase changes addresses, so the graph is dropped."""
        self._count = 0
        self._warm = False
        if not self._active:
            return
        head = self.runners["head"]
        for name in ("features", "history_len"):
            cuda_call(f"cuMemsetD8Async({name})", self._cuda.memset_d8_async, head.address(name), 0,
                      head.tensors[name].nbytes, self._stream)
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
        plan = history_plan(self._count, self.window)
        if plan.steady and self._exec:
            self._driver.launch(self._exec, self._stream.handle)
        elif plan.steady and self._warm and self.graph == "pending" and self._capture(plan):
            pass  # captured and launched
        else:
            self._enqueue(plan, capturing=False)
            self._warm = plan.steady
        cuda_call("cuStreamSynchronize", self._stream.synchronize)
        self._count = plan.new_len
        start, after_vision, after_trunk, end = self._events
        self.stage_ms["vision"] = self._driver.event_elapsed_ms(start, after_vision)
        self.stage_ms["trunk"] = self._driver.event_elapsed_ms(after_vision, after_trunk)
        self.stage_ms["head"] = self._driver.event_elapsed_ms(after_trunk, end)
        return BackendOutputs(self._actions, self._gripper, plan.new_len)

    def _enqueue(self, plan: HistoryPlan, capturing: bool) -> None:
        """One frame's work on the stream, in order; while capturing, the same calls become graph nodes."""
        cuda, stream, handle = self._cuda, self._stream, self._stream.handle
        vision, trunk, head = (self.runners[name] for name in MODEL_STAGES)
        history = head.address("features")
        self._driver.event_record(self._events[0], handle, capturing)
        if plan.shift:
            self._shift_history(history)
        cuda_call("cuMemcpyHtoDAsync(frame)", cuda.memcpy_htod_async, vision.address("frame"), self.frame, stream)
        if not plan.shift:  # history_len changes only while the window fills
            self._host["history_len"][0] = plan.new_len
            cuda_call("cuMemcpyHtoDAsync(history_len)", cuda.memcpy_htod_async, head.address("history_len"),
                      self._host["history_len"], stream)
        vision.enqueue()
        self._driver.event_record(self._events[1], handle, capturing)
        slot = history + plan.write_slot * self._row_bytes
        if self._direct:
            if trunk.address("action_feature") != slot:
                trunk.bind("action_feature", slot)
            trunk.enqueue()
        else:
            trunk.enqueue()
            cuda_call("cuMemcpyDtoDAsync(feature -> history)", cuda.memcpy_dtod_async, slot,
                      trunk.own_address("action_feature"), self._row_bytes, stream)
        self._driver.event_record(self._events[2], handle, capturing)
        head.enqueue()
        for spec in head.spec.outputs:
            cuda_call(f"cuMemcpyDtoHAsync({spec.name})", cuda.memcpy_dtoh_async, self._host[spec.name],
                      head.address(spec.name), stream)
        self._driver.event_record(self._events[3], handle, capturing)

    def _shift_history(self, history: int) -> None:
        """Rows 1..W-1 -> 0..W-2 through the scratch buffer (cuMemcpy with overlapping ranges is undefined)."""
        if self._scratch is None:
            return  # window 1: the trunk overwrites the only row
        size = (self.window - 1) * self._row_bytes
        scratch = int(self._scratch)
        cuda_call("cuMemcpyDtoDAsync(history -> scratch)", self._cuda.memcpy_dtod_async, scratch,
                  history + self._row_bytes, size, self._stream)
        cuda_call("cuMemcpyDtoDAsync(scratch -> history)", self._cuda.memcpy_dtod_async, history, scratch, size,
                  self._stream)

    def _capture(self, plan: HistoryPlan) -> bool:
        """Capture this steady-state frame as one CUDA graph and launch it; False (graph off) if refused."""
        driver, handle = self._driver, self._stream.handle
        try:
            driver.begin_capture(handle)
        except CudaError as exc:
            self._graph_off(f"stream capture did not start: {exc}")
            return False
        refused: str | None = None
        try:
            self._enqueue(plan, capturing=True)
        except CudaError as exc:  # TensorRT returns False from execute_async_v3 for work it cannot capture
            refused = str(exc)
        finally:
            status, graph = driver.end_capture(handle)
        if refused is None and (status != CUDA_SUCCESS or not graph):
            refused = f"cuStreamEndCapture returned {driver.error_name(status)}"
        if refused is None:
            try:
                self._exec = driver.instantiate(graph)
            except CudaError as exc:
                refused = str(exc)
        if graph:
            driver.graph_destroy(graph)  # the executable graph keeps what it needs
        if refused is not None:
            self._graph_off(f"capture refused: {refused}")
            return False
        driver.launch(self._exec, handle)
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
