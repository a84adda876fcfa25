"""The run plan of a bundle (docs/design.md §3.1): which part runs when, and where each input comes from.

Built once per bundle from the manifest's parts (in manifest order, which is the order they run in):
- `instruction` parts run once per instruction change (`set_text`); their outputs stay in their buffers, which the
  consuming parts read every frame: a cached feature costs nothing per frame.
- `frame` and `window` parts run every frame, in order. A `window` part reads the last `window` values of one frame
  part's output (left-aligned, zero rows past `history_len`), the history rule of docs/design.md §2.3.
- The last part's `actions` (and `gripper_logits`) are the policy's output.

Backends (runtime/backends/) and the build's calibration and parity walk this plan, so a new policy family needs
no runtime code: only its parts' specs in the manifest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from runtime.errors import MobileVLAError
from runtime.specs import CADENCES, PartSpec

TEXT_INPUTS = ("input_ids", "attention_mask", "action_index")
RESERVED = ("frame", "text", "history_len", "window")  # source words: no part may be named so
ACTION_OUTPUTS = ("actions", "gripper_logits")


@dataclass(frozen=True)
class Source:
    """Where one input comes from: `kind` frame | text | history_len | output | window."""

    kind: str
    part: str = ""  # output/window: the producing part; text: "" (the field is `tensor`)
    tensor: str = ""  # output/window: the producing part's output; text: the TextInputs field

    @property
    def key(self) -> str:
        return f"{self.part}.{self.tensor}"


def parse_source(text: str) -> Source:
    if text in ("frame", "history_len"):
        return Source(text)
    if text.startswith("text."):
        return Source("text", tensor=text.removeprefix("text."))
    kind, inner = "output", text
    if text.startswith("window(") and text.endswith(")"):
        kind, inner = "window", text[len("window("):-1]
    part, dot, tensor = inner.partition(".")
    if not dot or not part or not tensor:
        raise ValueError(f"input source {text!r} is none of frame, history_len, text.NAME, PART.OUTPUT, "
                         f"window(PART.OUTPUT)")
    return Source(kind, part, tensor)


@dataclass(frozen=True)
class Link:
    """`consumer.input` reads `source` (parsed)."""

    consumer: str
    input: str
    source: Source


@dataclass(frozen=True)
class RunPlan:
    parts: tuple[PartSpec, ...]  # manifest order
    links: tuple[Link, ...]

    @functools.cached_property  # read every frame by the backends: computed once
    def instruction_parts(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts if p.cadence == "instruction")

    @functools.cached_property  # read every frame by the backends: computed once
    def frame_parts(self) -> tuple[str, ...]:
        """Run every frame, in this order (frame and window cadence)."""
        return tuple(p.name for p in self.parts if p.cadence != "instruction")

    @functools.cached_property  # read every frame by the backends: computed once
    def final(self) -> PartSpec:
        return self.parts[-1]

    @functools.cached_property  # read every frame by the backends: computed once
    def window_link(self) -> Link | None:
        return next((link for link in self.links if link.source.kind == "window"), None)

    def spec(self, name: str) -> PartSpec:
        return next(p for p in self.parts if p.name == name)

    def inputs_of(self, name: str) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.consumer == name)

    def upstream(self, name: str) -> set[str]:
        """Every part whose outputs `name` needs, directly or through others."""
        found: set[str] = set()
        pending = [name]
        while pending:
            for link in self.inputs_of(pending.pop()):
                if link.source.part and link.source.part not in found:
                    found.add(link.source.part)
                    pending.append(link.source.part)
        return found


def plan_problem(where: str, problem: str) -> MobileVLAError:
    return MobileVLAError(f"{where}: {problem}. The bundle's manifest is damaged or was written by an adapter with a "
                          f"bug; rebuild the bundle with build_engines (docs/adapters.md says what a part may read)")


def run_plan(parts: tuple[PartSpec, ...], window: int, where: str = "bundle") -> RunPlan:
    """Check the parts' cadences and sources against each other and return the plan; MobileVLAError when wrong."""
    if not parts:
        raise plan_problem(where, "the manifest lists no parts")
    seen: dict[str, PartSpec] = {}
    links: list[Link] = []
    for spec in parts:
        if spec.name in RESERVED or "." in spec.name or spec.name in seen:
            raise plan_problem(where, f"part name {spec.name!r} is reserved, dotted or used twice (reserved: "
                                      f"{', '.join(RESERVED)})")
        if spec.cadence not in CADENCES:
            raise plan_problem(where, f"part {spec.name} has cadence {spec.cadence!r}, not one of {CADENCES}")
        if set(dict(spec.sources)) != set(spec.input_names()):
            raise plan_problem(where, f"part {spec.name} names sources for {sorted(dict(spec.sources))}, its inputs "
                                      f"are {spec.input_names()}")
        for name, text in spec.sources:
            try:
                source = parse_source(text)
            except ValueError as exc:
                raise plan_problem(where, f"part {spec.name} input {name}: {exc}") from exc
            check_link(where, spec, name, source, seen, window)
            links.append(Link(spec.name, name, source))
        seen[spec.name] = spec
    frames = {next(t.shape for t in seen[link.consumer].inputs if t.name == link.input)
              for link in links if link.source.kind == "frame"}
    if len(frames) > 1:
        raise plan_problem(where, f"parts read the frame at different shapes {sorted(frames)}; there is one frame")
    final = parts[-1]
    if final.cadence == "instruction" or "actions" not in final.output_names():
        raise plan_problem(where, f"the last part ({final.name}) must run per frame and output `actions`")
    windows = [link for link in links if link.source.kind == "window"]
    if len(windows) > 1:
        raise plan_problem(where, f"{len(windows)} parts read a window; one history per bundle is supported")
    return RunPlan(tuple(parts), tuple(links))


def check_link(where: str, spec: PartSpec, name: str, source: Source, seen: dict[str, PartSpec], window: int) -> None:
    tensor = next(t for t in spec.inputs if t.name == name)
    label = f"part {spec.name} input {name}"
    if source.kind == "text":
        if source.tensor not in TEXT_INPUTS:
            raise plan_problem(where, f"{label} reads text.{source.tensor}; text inputs are {TEXT_INPUTS}")
        return
    if source.kind == "frame" and (tensor.dtype != "uint8" or len(tensor.shape) != 4 or tensor.shape[0] != 1):
        raise plan_problem(where, f"{label} reads the frame into {tensor.dtype}{list(tensor.shape)}; the frame is "
                                  f"uint8 (1, S, S, C) as the capture delivers it")
    if source.kind == "frame" or source.kind == "history_len":
        if spec.cadence == "instruction":
            raise plan_problem(where, f"{label}: an instruction part cannot read the {source.kind}")
        if source.kind == "history_len" and spec.cadence != "window":
            raise plan_problem(where, f"{label}: only a window part reads history_len")
        return
    producer = seen.get(source.part)
    if producer is None:
        raise plan_problem(where, f"{label} reads {source.key}, which no earlier part produces")
    output = next((t for t in producer.outputs if t.name == source.tensor), None)
    if output is None:
        raise plan_problem(where, f"{label} reads {source.key}; {producer.name} outputs {producer.output_names()}")
    if spec.cadence == "instruction" and producer.cadence != "instruction":
        raise plan_problem(where, f"{label}: an instruction part cannot read the per-frame {source.key}")
    if source.kind == "window":
        if spec.cadence != "window" or producer.cadence == "instruction":
            raise plan_problem(where, f"{label}: window(...) is read by a window part, of a per-frame output")
        want = (output.shape[0], window, *output.shape[1:])
    else:
        want = output.shape
    if tensor.shape != want or tensor.dtype != output.dtype:
        raise plan_problem(where, f"{label} is {tensor.dtype}{list(tensor.shape)}, its source {source.key} gives "
                                  f"{output.dtype}{list(want)}")
