"""Each sub-model's export spec, declared once (docs/design.md §3, §6): read by export, build and runtime.

Shapes are fixed (batch 1) so that TensorRT needs no dynamic profiles. A part also says when it runs (`cadence`)
and where each input comes from (`sources`); runtime/plan.py turns the parts into the per-bundle run plan
(docs/design.md §3.1). The Kosmos-2 + LSTM family's three parts (`part_specs`):
- vision: the uint8 frame as the capture delivers it -> image embeds.
- trunk: image embeds + the padded prompt ids -> the action token's last hidden state.
- head: the last `window` features (zero rows past `history_len`) -> the action chunk. The LSTM is causal, so the
  output at step `history_len - 1` equals the LSTM run from zero state over exactly those frames (docs/design.md §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ONNX_OPSET = 17
PART_NAMES = ("vision", "trunk", "head")  # the Kosmos-2 + LSTM family's parts (bundles before `cadence`)
HEAD_VARIANTS = ("velocities", "actions_gripper")
# frame: every frame; instruction: once per instruction change, outputs cached; window: every frame, over the
# last `window` values of a frame part's output (zero rows past `history_len`)
CADENCES = ("frame", "instruction", "window")
# Where an input comes from: "frame", "text.input_ids" | "text.attention_mask" | "text.action_index",
# "history_len", "PART.OUTPUT" (that part's output, this frame or cached), "window(PART.OUTPUT)".
LEGACY_SOURCES: dict[str, dict[str, str]] = {  # the three parts of a bundle written before sources existed
    "vision": {"frame": "frame"},
    "trunk": {"image_embeds": "vision.image_embeds", "input_ids": "text.input_ids",
              "attention_mask": "text.attention_mask", "action_index": "text.action_index"},
    "head": {"features": "window(trunk.action_feature)", "history_len": "history_len"},
}
LEGACY_CADENCE = {"vision": "frame", "trunk": "frame", "head": "window"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: uint8, int64, float32
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class PartSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    tolerance: float  # fp32 parity bound: max abs error against the PyTorch reference
    cadence: str = "frame"
    sources: tuple[tuple[str, str], ...] = ()  # (input name, source) for every input, in input order

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "opset": self.opset,
            "tolerance": self.tolerance,
            "cadence": self.cadence,
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> PartSpec:
        sources = data.get("sources", LEGACY_SOURCES.get(name, {}))
        return cls(
            name=name,
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            opset=int(data["opset"]),
            tolerance=float(data["tolerance"]),
            cadence=str(data.get("cadence", LEGACY_CADENCE.get(name, "frame"))),
            sources=tuple((str(k), str(v)) for k, v in dict(sources).items()),
        )

    def source(self, input_name: str) -> str:
        return dict(self.sources)[input_name]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class PartDims:
    """The numbers that fix every part's shapes."""

    image_size: int
    frame_channels: int
    num_image_tokens: int
    text_dim: int
    sequence_length: int
    window: int
    chunk: int
    action_dim: int
    head_variant: str


def part_specs(d: PartDims) -> dict[str, PartSpec]:
    """The three parts' I/O for the given dimensions."""
    vision = PartSpec(
        "vision",
        inputs=(TensorSpec("frame", "uint8", (1, d.image_size, d.image_size, d.frame_channels)),),
        outputs=(TensorSpec("image_embeds", "float32", (1, d.num_image_tokens, d.text_dim)),),
        opset=ONNX_OPSET,
        tolerance=1e-3,
        sources=tuple(LEGACY_SOURCES["vision"].items()),
    )
    trunk = PartSpec(
        "trunk",
        inputs=(
            TensorSpec("image_embeds", "float32", (1, d.num_image_tokens, d.text_dim)),
            TensorSpec("input_ids", "int64", (1, d.sequence_length)),
            TensorSpec("attention_mask", "int64", (1, d.sequence_length)),
            TensorSpec("action_index", "int64", (1,)),
        ),
        outputs=(TensorSpec("action_feature", "float32", (1, d.text_dim)),),
        opset=ONNX_OPSET,
        tolerance=1e-3,
        sources=tuple(LEGACY_SOURCES["trunk"].items()),
    )
    head_outputs = action_outputs(d.head_variant, d.chunk, d.action_dim)
    head = PartSpec(
        "head",
        inputs=(
            TensorSpec("features", "float32", (1, d.window, d.text_dim)),
            TensorSpec("history_len", "int64", (1,)),
        ),
        outputs=head_outputs,
        opset=ONNX_OPSET,
        tolerance=1e-4,
        cadence="window",
        sources=tuple(LEGACY_SOURCES["head"].items()),
    )
    return {"vision": vision, "trunk": trunk, "head": head}


def action_outputs(head_variant: str, chunk: int, action_dim: int) -> tuple[TensorSpec, ...]:
    """The last part's outputs: `actions` (tanh or linear), plus `gripper_logits` for the actions_gripper head."""
    if head_variant == "velocities":
        return (TensorSpec("actions", "float32", (1, chunk, action_dim)),)
    return (
        TensorSpec("actions", "float32", (1, chunk, action_dim - 1)),
        TensorSpec("gripper_logits", "float32", (1, chunk)),
    )
