"""The team's policy metrics (docs/design.md §2.5): chunk[0] against recorded actions, or one run against another.

MAE; per-axis and all-axes accuracy within 0.3 / 0.2 / 0.15; R²; Pearson correlation; direction (sign) accuracy.
Direction uses a dead band: a value within ±`dead_band` counts as "no motion" (sign 0), and two values whose signs
differ still agree when they are within `dead_band` of each other (0.049 and 0.051 straddle the band's edge, they
do not point different ways). So noise around zero is not scored as a direction error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ACCURACY_THRESHOLDS = (0.3, 0.2, 0.15)
DEFAULT_DEAD_BAND = 0.05
AXIS_NAMES = ("linear_x", "linear_y", "angular_z")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken as flat vectors.

    NaN when either holds NaN or inf (a gate must fail on it, never read it as a match); 1.0 when both are all
    zeros, 0.0 when only one is (an all-zero output matches nothing).
    """
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(x @ y / (nx * ny))


def signs(values: np.ndarray, dead_band: float) -> np.ndarray:
    return np.where(np.abs(values) <= dead_band, 0, np.sign(values)).astype(np.int8)


def r_squared(pred: np.ndarray, target: np.ndarray) -> float:
    residual = float(np.sum((target - pred) ** 2))
    total = float(np.sum((target - target.mean()) ** 2))
    if total == 0.0:
        return 1.0 if residual == 0.0 else float("nan")
    return 1.0 - residual / total


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    if pred.std() == 0.0 or target.std() == 0.0:
        return float("nan")
    return float(np.corrcoef(pred, target)[0, 1])


@dataclass(frozen=True)
class AxisScore:
    mae: float
    max_abs_err: float
    accuracy: dict[float, float]  # threshold -> fraction within it
    r2: float
    pearson: float
    direction: float


@dataclass(frozen=True)
class Scores:
    frames: int
    mae: float
    max_abs_err: float
    all_axes_accuracy: dict[float, float]
    direction: float  # all axes' directions agree
    axes: dict[str, AxisScore] = field(default_factory=dict)
    excluded_frames: dict[str, int] = field(default_factory=dict)  # frames left out of the scores, by reason
    skipped_episodes: tuple[tuple[str, str], ...] = ()  # (episode, why) left out of the replay

    def to_dict(self) -> dict[str, object]:
        def rounded(values: dict[float, float]) -> dict[str, float]:
            return {f"{k:g}": round(v, 4) for k, v in values.items()}

        return {
            "frames": self.frames,
            "mae": round(self.mae, 5),
            "max_abs_err": round(self.max_abs_err, 5),
            "all_axes_accuracy": rounded(self.all_axes_accuracy),
            "direction": round(self.direction, 4),
            "axes": {
                name: {"mae": round(a.mae, 5), "max_abs_err": round(a.max_abs_err, 5), "accuracy": rounded(a.accuracy),
                       "r2": round(a.r2, 4), "pearson": round(a.pearson, 4), "direction": round(a.direction, 4)}
                for name, a in self.axes.items()
            },
            "excluded_frames": dict(self.excluded_frames),
            "skipped_episodes": [{"episode": name, "why": why} for name, why in self.skipped_episodes],
        }


def score(pred: np.ndarray, target: np.ndarray, dead_band: float = DEFAULT_DEAD_BAND,
          thresholds: tuple[float, ...] = ACCURACY_THRESHOLDS) -> Scores:
    """`pred`, `target`: `(frames, axes)` float arrays."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[0] == 0:
        raise ValueError(f"bug: scoring needs equal (frames, axes) arrays, got {pred.shape} and {target.shape}")
    error = np.abs(pred - target)
    same_direction = (signs(pred, dead_band) == signs(target, dead_band)) | (error <= dead_band)
    axes = {}
    for axis in range(pred.shape[1]):
        name = AXIS_NAMES[axis] if axis < len(AXIS_NAMES) else f"axis{axis}"
        axes[name] = AxisScore(
            mae=float(error[:, axis].mean()),
            max_abs_err=float(error[:, axis].max()),
            accuracy={t: float((error[:, axis] < t).mean()) for t in thresholds},
            r2=r_squared(pred[:, axis], target[:, axis]),
            pearson=pearson(pred[:, axis], target[:, axis]),
            direction=float(same_direction[:, axis].mean()),
        )
    return Scores(
        frames=pred.shape[0],
        mae=float(error.mean()),
        max_abs_err=float(error.max()),
        all_axes_accuracy={t: float((error < t).all(axis=1).mean()) for t in thresholds},
        direction=float(same_direction.all(axis=1).mean()),
        axes=axes,
    )


def scores_table(results: dict[str, Scores]) -> str:
    """Side-by-side table: one column per run (e.g. fp32, int8)."""
    names = list(results)
    rows: list[tuple[str, list[str]]] = [
        ("frames", [str(results[n].frames) for n in names]),
        ("MAE", [f"{results[n].mae:.4f}" for n in names]),
        ("max abs err", [f"{results[n].max_abs_err:.4f}" for n in names]),
    ]
    first = results[names[0]]
    for t in first.all_axes_accuracy:
        rows.append((f"acc@{t:g} all axes", [f"{results[n].all_axes_accuracy[t]:.1%}" for n in names]))
    rows.append(("direction all axes", [f"{results[n].direction:.1%}" for n in names]))
    reasons = sorted({reason for n in names for reason in results[n].excluded_frames})
    rows += [(f"left out: {reason}", [str(results[n].excluded_frames.get(reason, 0)) for n in names])
             for reason in reasons]
    for axis in first.axes:
        rows.append((f"{axis} MAE", [f"{results[n].axes[axis].mae:.4f}" for n in names]))
        for t in first.axes[axis].accuracy:
            rows.append((f"{axis} acc@{t:g}", [f"{results[n].axes[axis].accuracy[t]:.1%}" for n in names]))
        rows.append((f"{axis} R²", [f"{results[n].axes[axis].r2:.3f}" for n in names]))
        rows.append((f"{axis} Pearson r", [f"{results[n].axes[axis].pearson:.3f}" for n in names]))
        rows.append((f"{axis} direction", [f"{results[n].axes[axis].direction:.1%}" for n in names]))
    width = max(len(label) for label, _ in rows)
    header = f"{'metric':<{width}}  " + "  ".join(f"{n:>10}" for n in names)
    lines = [header, "-" * len(header)]
    lines += [f"{label:<{width}}  " + "  ".join(f"{v:>10}" for v in values) for label, values in rows]
    return "\n".join(lines)
