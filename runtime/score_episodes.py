"""`runtime --score`: the real runtime loop over recorded episodes, chunk[0] against each frame's recorded action."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import replace

import numpy as np

from runtime.backends.onnx_forms import onnx_precision, open_onnx_backend
from runtime.bundle import Bundle
from runtime.config import RuntimeConfig
from runtime.errors import MobileVLAError
from runtime.pipeline import StepResult
from runtime.scoring import Scores, score, scores_table
from runtime.sinks.base import VelocityCommand
from runtime.sources.base import CaptureResult
from runtime.wiring import run_policy

log = logging.getLogger("runtime")

DAMAGED_EPISODE = "episode damaged part-way (skipped whole)"
NON_FINITE_ACTION = "recorded action not finite"
NON_FINITE_PREDICTION = "prediction not finite"


def score_runs(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, frames: int | None) -> int:
    if args.precision is None and config.precision == "auto" and bundle.manifest.has_int8:
        runs = ["fp32", "int8"]
    else:
        runs = [onnx_precision(config.precision, bundle)]
    results = {precision: score_run(args, config, bundle, precision, frames) for precision in runs}
    print(f"chunk[0] vs recorded actions, {config.source.parsed.arg}:")
    print(scores_table(results))
    for name, why in next(iter(results.values())).skipped_episodes:
        print(f"skipped episode {name}: {why}")
    if args.json is not None:
        args.json.write_text(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2) + "\n")
        print(f"scores JSON written to {args.json}")
    return 0


def score_run(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, precision: str,
              frames: int | None) -> Scores:
    """The real runtime loop over recorded episodes (ONNX Runtime); chunk[0] against each frame's recorded action.

    Frames are left out, and counted by reason, when their recorded action or the prediction is not finite, and
    when their episode turned out damaged part-way (the whole episode is dropped); the run never scores NaN.
    """
    dim = bundle.manifest.policy.action_dim
    rows: list[tuple[str, np.ndarray, np.ndarray]] = []  # (episode, predicted, recorded)

    def collect(got: CaptureResult, result: StepResult, command: VelocityCommand | None, instruction: str) -> None:
        assert got.recorded_action is not None  # require_actions: the reader refused episodes without them
        rows.append((got.episode, result.velocity[:dim].copy(), got.recorded_action[:dim]))

    backend = open_onnx_backend(precision, bundle, config.threads)  # the graphs `runtime` runs, logged
    result, _ = run_policy(config, bundle, backend, args, None, collect, frames, require_actions=True)
    if result.frames == 0:
        raise MobileVLAError(f"source {config.source.spec} delivered no frames to score")
    kept, excluded = usable_rows(rows, {name for name, _ in result.skipped_episodes})
    for reason, count in excluded.items():
        log.warning("%s: %d frames left out of the scores: %s", precision, count, reason)
    if not kept:
        raise MobileVLAError(f"source {config.source.spec}: none of its {len(rows)} frames can be scored "
                             f"({', '.join(f'{r}: {n}' for r, n in excluded.items())}); check the recorded episodes")
    log.info("scored %d frames with the %s graphs", len(kept), precision)
    scores = score(np.stack([p for p, _ in kept]), np.stack([r for _, r in kept]))
    return replace(scores, excluded_frames=excluded, skipped_episodes=tuple(result.skipped_episodes))


def usable_rows(rows: list[tuple[str, np.ndarray, np.ndarray]],
                damaged: set[str]) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """The (predicted, recorded) pairs that can be scored, and how many were left out for each reason."""
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    excluded: Counter[str] = Counter()
    for episode, predicted, recorded in rows:
        if episode in damaged:
            excluded[DAMAGED_EPISODE] += 1
        elif not np.isfinite(recorded).all():
            excluded[NON_FINITE_ACTION] += 1
        elif not np.isfinite(predicted).all():
            excluded[NON_FINITE_PREDICTION] += 1
        else:
            kept.append((predicted, recorded))
    return kept, dict(excluded)
