"""Range checks of the action settings, shared by the training-config reader and the bundle loader.

One definition of what a usable de-normalization is, so a value the build refuses in a training config is also
refused in a bundle's manifest (a manifest edited by hand, or written by a build without these checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.errors import range_problem

if TYPE_CHECKING:
    from runtime.bundle import ActionSettings

# No velocity or normalized action of a mobile robot or arm is anywhere near 1000 units: a larger norm_min/norm_max
# or output_limit is a corrupted or mistyped config. output_scale multiplies every command.
ACTION_BOUND = 1000.0
MAX_OUTPUT_SCALE = 100.0


def bound_problems(key: str, values: tuple[float, ...], action_dim: int) -> list[str]:
    """`norm_min`/`norm_max`: 1 value (every axis) or one per axis, each finite and within ±ACTION_BOUND."""
    problems = []
    if len(values) not in (1, action_dim):
        problems.append(f"{key} has {len(values)} values: it must have 1 or action_dim = {action_dim}")
    for i, value in enumerate(values):
        problem = range_problem(value, -ACTION_BOUND, ACTION_BOUND)
        if problem is not None:
            problems.append(f"{key}[{i}] = {value!r}: {problem}")
    return problems


def order_problems(low: tuple[float, ...], high: tuple[float, ...]) -> list[str]:
    """Axes where norm_min is not below norm_max (one value applies to every axis). Swapped bounds flip the sign
    of every de-normalized velocity; equal ones make the axis constant."""
    problems = []
    for axis in range(max(len(low), len(high))):
        i, j = (axis if len(low) > 1 else 0), (axis if len(high) > 1 else 0)
        if not low[i] < high[j]:
            problems.append(f"norm_min[{i}] = {low[i]!r} is not below norm_max[{j}] = {high[j]!r} (axis {axis}; "
                            f"swapped bounds flip the sign of every velocity)")
    return problems


def denormalization_problems(low: tuple[float, ...], high: tuple[float, ...], action_dim: int) -> list[str]:
    """Everything wrong with a de-normalization range (empty when it is usable)."""
    problems = bound_problems("norm_min", low, action_dim) + bound_problems("norm_max", high, action_dim)
    return problems or order_problems(low, high)


def action_problems(action: ActionSettings, action_dim: int) -> list[str]:
    """What in `action` is non-finite or out of range (empty when nothing is)."""
    problems = denormalization_problems(action.norm_min, action.norm_max, action_dim)
    problem = range_problem(action.output_scale, 0.0, MAX_OUTPUT_SCALE, low_open=True)
    if problem is not None:
        problems.append(f"output_scale = {action.output_scale!r}: {problem}")
    if action.output_limit is not None:
        problem = range_problem(action.output_limit, 0.0, ACTION_BOUND, low_open=True)
        if problem is not None:
            problems.append(f"output_limit = {action.output_limit!r}: {problem}")
    return problems
