"""Parity: ONNX Runtime vs the PyTorch reference, per part and end to end through the real runtime pipeline.

Every comparison is NaN-aware: `max(0.0, nan)` is 0.0 and `nan <= tol` is False, so a NaN output could otherwise
read as a perfect match. An output (got or wanted) holding NaN or inf fails its part, whatever the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from build_engines.adapters.base import PolicyAdapter, Reference
from calibration.cascade import feed_for
from runtime.backends.base import Runner
from runtime.backends.onnxruntime import onnx_backend
from runtime.bundle import Bundle
from runtime.pipeline import OutputSettings, PolicyPipeline, denormalize
from runtime.prompt import layout_text_inputs
from runtime.scoring import cosine


@dataclass
class ErrorStats:
    max_abs_err: float = 0.0
    mean_abs_err: float = 0.0
    min_cosine: float = 1.0
    samples: int = 0
    non_finite: int = 0  # compared outputs (got or wanted) that held NaN or inf

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        if not (np.isfinite(got).all() and np.isfinite(want).all()):
            self.non_finite += 1
        # np.fmax/np.maximum semantics matter here: builtin max() drops a NaN that comes second.
        self.max_abs_err = float(np.maximum(self.max_abs_err, diff.max()))
        self.mean_abs_err = (self.mean_abs_err * self.samples + float(diff.mean())) / (self.samples + 1)
        self.min_cosine = float(np.minimum(self.min_cosine, cosine(got, want)))
        self.samples += 1


@dataclass
class PartParity:
    stats: ErrorStats
    tolerance: float

    @property
    def passed(self) -> bool:
        stats = self.stats
        return stats.non_finite == 0 and math.isfinite(stats.max_abs_err) and stats.max_abs_err <= self.tolerance

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self.stats), "tolerance": self.tolerance, "passed": self.passed}


@dataclass
class ParityReport:
    parts: dict[str, PartParity]  # every part, end_to_end (de-normalized chunk), chunk0
    frames: int
    layout: str
    head_variant: str
    family: str = "robovlms-lstm"

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parts.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "layout": self.layout,
            "head_variant": self.head_variant,
            "family": self.family,
            "passed": self.passed,
            "parts": {name: p.to_dict() for name, p in self.parts.items()},
        }


def numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def check_parts(runners: Mapping[str, Runner], steps: Reference, frames: Sequence[np.ndarray], bundle: Bundle,
                prompt_ids: Sequence[int]) -> dict[str, ErrorStats]:
    """Each part fed the reference's own inputs (built from its sources, calibration/cascade.py), so errors do not
    compound across parts."""
    manifest = bundle.manifest
    text = layout_text_inputs(list(prompt_ids), manifest.prompt).feed()
    plan = bundle.plan
    stats = {name: ErrorStats() for name in manifest.parts}
    for t in range(len(frames)):
        for name in manifest.parts:
            feed = feed_for(plan, name, t, lambda key, i: numpy(steps[i][key]), lambda i: frames[i], text,
                            manifest.policy.window)
            for output, got in runners[name].infer(feed).items():
                stats[name].add(got, numpy(steps[t][f"{name}.{output}"]))
    return stats


def check_parity(adapter: PolicyAdapter, model: torch.nn.Module, bundle: Bundle, frames: Sequence[np.ndarray],
                 prompt_ids: Sequence[int], instruction: str, tolerance: float) -> ParityReport:
    manifest = bundle.manifest
    with torch.no_grad():
        steps = adapter.reference(model, frames, prompt_ids, manifest.prompt, manifest.preprocessing)
    output = OutputSettings(manifest.action.output_scale, manifest.action.output_limit)
    final = bundle.plan.final.name
    with onnx_backend(bundle) as backend:
        part_stats = check_parts(backend.runners, steps, frames, bundle, prompt_ids)
        pipeline = PolicyPipeline(bundle, backend, instruction, output)
        end_to_end, first = ErrorStats(), ErrorStats()
        for frame, step in zip(frames, steps, strict=True):
            result = pipeline.step(frame)
            want = denormalize(numpy(step[f"{final}.actions"][0]), manifest.action, output)
            end_to_end.add(result.chunk, want)
            first.add(result.velocity, want[0])
    specs = {name: entry.spec for name, entry in manifest.parts.items()}
    parts = {name: PartParity(stats, specs[name].tolerance) for name, stats in part_stats.items()}
    parts["end_to_end"] = PartParity(end_to_end, tolerance)
    parts["chunk0"] = PartParity(first, tolerance)
    return ParityReport(parts, len(frames), manifest.prompt.layout, manifest.policy.head_variant,
                        manifest.policy.family)


def parity_failure(parity: ParityReport) -> str:
    failed = [part_failure(name, p) for name, p in parity.parts.items() if not p.passed]
    if any(p.stats.non_finite for p in parity.parts.values()):
        return ("parity FAILED: outputs hold NaN or inf: " + "; ".join(failed) + ". No bundle was written. The "
                "weights or the training config's normalization produce non-finite values; check the checkpoint "
                "and the config")
    return ("the exported parts do not reproduce the reference policy: " + "; ".join(failed)
            + ". No bundle was written. This is a bug in the export unless --parity-tolerance is set too tight; "
              "report it with the build log")


def part_failure(name: str, part: PartParity) -> str:
    if part.stats.non_finite:
        return f"{name}: {part.stats.non_finite} of {part.stats.samples} outputs non-finite"
    return f"{name} max abs err {part.stats.max_abs_err:.3g} > {part.tolerance:g}"
