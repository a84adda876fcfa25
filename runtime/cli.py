"""`runtime`: run a bundle on frames and print velocities as JSON lines, or benchmark it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import numpy as np

from runtime.benchmark import StageRecorder, summarize
from runtime.bundle import Bundle, load_bundle
from runtime.errors import MobileVLAError, run_cli
from runtime.paths import default_bundle_dir
from runtime.pipeline import STAGES, OutputSettings, PolicyPipeline, StepResult, onnx_runners
from runtime.scoring import Scores, score, scores_table
from runtime.sources import Frame, open_source

log = logging.getLogger("runtime")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runtime",
        description="Run a Mobile VLA bundle: frames -> vision -> trunk -> head -> velocity commands (JSON lines).",
    )
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"bundle directory (default: $MOBILE_VLA_BUNDLE or {default_bundle_dir()})")
    parser.add_argument("--source", default="synthetic",
                        help="frame source: `synthetic` (generated scene) or `h5:PATH` (episode file or directory)")
    parser.add_argument("--h5-color", choices=("bgr", "rgb"), default="bgr",
                        help="channel order of the images stored in h5 episodes (the robot's recorder stores bgr8)")
    parser.add_argument("--instruction", default=None,
                        help="language instruction (default: from the episode, else the bundle's default)")
    parser.add_argument("--frames", type=int, default=None,
                        help="number of frames to run (default: until the source ends; 200 with --benchmark)")
    parser.add_argument("--output", default=None,
                        help="where JSON lines go: `-` for stdout, a file path, or `none` "
                             "(default: stdout, none with --benchmark)")
    parser.add_argument("--output-scale", type=float, default=None,
                        help="multiply de-normalized velocities by this (default: the bundle's, usually 1.0)")
    parser.add_argument("--output-limit", type=float, default=None,
                        help="clip velocities to ±this after scaling (default: the bundle's, usually none)")
    parser.add_argument("--benchmark", action="store_true",
                        help="time every stage and print p50/p99 latency and FPS (JSON lines off unless --output)")
    parser.add_argument("--warmup", type=int, default=10, help="benchmark warm-up frames, not timed (default 10)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the benchmark report (or, with --score, the scores) as JSON to this file")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="ONNX Runtime graphs to run: int8 runs the Q/DQ parts that passed the gate (FP32 for the "
                             "rest); auto: int8 when the bundle has them (default)")
    parser.add_argument("--score", action="store_true",
                        help="score chunk[0] against the episodes' recorded actions (needs --source h5:DIR): MAE, "
                             "accuracy within 0.3/0.2/0.15, R², Pearson, direction; FP32 and INT8 side by side "
                             "unless --precision picks one")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of bundle files on load")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def result_record(frame: Frame, result: StepResult, instruction: str) -> dict[str, object]:
    record: dict[str, object] = {
        "timestamp": frame.timestamp,
        "episode": frame.episode,
        "frame": frame.index,
        "instruction": instruction,
        "velocity": [round(float(v), 6) for v in result.velocity],
        "chunk": [[round(float(v), 6) for v in row] for row in result.chunk],
        "history": result.history_len,
    }
    if result.gripper_prob is not None:
        record["gripper_prob"] = [round(float(v), 6) for v in result.gripper_prob]
    if frame.recorded_action is not None:
        record["recorded_action"] = [round(float(v), 6) for v in frame.recorded_action]
    return record


def open_output(stack: ExitStack, target: str | None, benchmark: bool) -> TextIO | None:
    if target is None:
        target = "none" if benchmark else "-"
    if target == "none":
        return None
    if target == "-":
        return sys.stdout
    return stack.enter_context(Path(target).open("w"))


def precisions(args: argparse.Namespace, bundle: Bundle) -> list[str]:
    if args.precision == "int8" and not bundle.manifest.has_int8:
        raise MobileVLAError(f"bundle {bundle.root} has no INT8 parts; build it with `build_engines --int8`, or use "
                             f"--precision fp32")
    if args.precision != "auto":
        return [args.precision]
    if args.score and bundle.manifest.has_int8:
        return ["fp32", "int8"]
    return ["int8" if bundle.manifest.has_int8 else "fp32"]


def run(args: argparse.Namespace) -> int:
    bundle: Bundle = load_bundle(args.bundle or default_bundle_dir(), verify_hashes=not args.no_verify)
    manifest = bundle.manifest
    if args.score and args.benchmark:
        raise MobileVLAError("--score and --benchmark are separate runs; pick one")
    if args.score and not args.source.startswith("h5:"):
        raise MobileVLAError(f"--score needs recorded actions: use --source h5:DIR (got --source {args.source})")
    output = OutputSettings(
        scale=manifest.action.output_scale if args.output_scale is None else args.output_scale,
        limit=manifest.action.output_limit if args.output_limit is None else args.output_limit,
    )
    frames = args.frames if args.frames is not None else (args.warmup + 200 if args.benchmark else None)
    if frames is not None and frames <= (args.warmup if args.benchmark else 0):
        raise MobileVLAError(f"--frames {frames} leaves nothing to time after --warmup {args.warmup}; raise --frames")
    runs = precisions(args, bundle)
    if args.score:
        results = {precision: score_run(args, bundle, precision, frames, output) for precision in runs}
        print(f"chunk[0] vs recorded actions, {args.source[3:]}:")
        print(scores_table(results))
        if args.json is not None:
            args.json.write_text(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2) + "\n")
            print(f"scores JSON written to {args.json}")
        return 0
    precision = runs[0]
    log.info("bundle %s: layout %s, head %s, backend onnxruntime (CPU), %s graphs", bundle.root,
             manifest.prompt.layout, manifest.policy.head_variant, precision)
    source = open_source(args.source, manifest.preprocessing, frames, args.h5_color)
    recorder = StageRecorder(STAGES, frames or 100_000)
    with ExitStack() as stack:
        sink = open_output(stack, args.output, args.benchmark)
        done, wall = run_loop(stack, args, bundle, precision, output, source, sink, recorder)
    if done == 0:
        raise MobileVLAError(f"source {args.source} delivered no frames")
    if args.benchmark:
        report = summarize(recorder, args.warmup, wall, f"onnxruntime-cpu ({precision})")
        print(report.table())
        if args.json is not None:
            args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            print(f"benchmark JSON written to {args.json}")
    return 0


def run_loop(stack: ExitStack, args: argparse.Namespace, bundle: Bundle, precision: str, output: OutputSettings,
             source: Iterator[Frame], sink: TextIO | None, recorder: StageRecorder | None,
             on_result: Callable[[Frame, StepResult], None] | None = None) -> tuple[int, float]:
    """Frames through the pipeline; returns (frames done, seconds after warm-up)."""
    runners = onnx_runners(bundle, args.threads, precision)
    for runner in runners.values():
        stack.enter_context(runner)
    pipeline = PolicyPipeline(bundle, runners, args.instruction, output)
    default_instruction = bundle.manifest.prompt.default_instruction
    done = 0
    started = time.perf_counter()
    for frame in source:
        if frame.new_episode:
            pipeline.reset()
            wanted = args.instruction or frame.instruction or default_instruction
            if wanted != pipeline.instruction:
                pipeline.set_instruction(wanted)
        result = pipeline.step(frame.pixels)
        done += 1
        if args.benchmark and done == args.warmup:
            started = time.perf_counter()
        elif recorder is not None and (not args.benchmark or done > args.warmup):
            recorder.record(result.timings_ms)
        if sink is not None:
            sink.write(json.dumps(result_record(frame, result, pipeline.instruction)) + "\n")
        if on_result is not None:
            on_result(frame, result)
    return done, time.perf_counter() - started


def score_run(args: argparse.Namespace, bundle: Bundle, precision: str, frames: int | None,
              output: OutputSettings) -> Scores:
    """The real runtime loop over recorded episodes; chunk[0] against each frame's recorded action."""
    manifest = bundle.manifest
    dim = manifest.policy.action_dim
    source = open_source(args.source, manifest.preprocessing, frames, args.h5_color, require_actions=True,
                         action_dim=dim)
    predicted: list[np.ndarray] = []
    recorded: list[np.ndarray] = []

    def collect(frame: Frame, result: StepResult) -> None:
        assert frame.recorded_action is not None  # require_actions: the reader refused episodes without them
        predicted.append(result.velocity[:dim].copy())
        recorded.append(frame.recorded_action[:dim])

    with ExitStack() as stack:
        sink = open_output(stack, args.output, benchmark=True)
        done, _ = run_loop(stack, args, bundle, precision, output, source, sink, None, collect)
    if done == 0:
        raise MobileVLAError(f"source {args.source} delivered no frames to score")
    log.info("scored %d frames with the %s graphs", done, precision)
    return score(np.stack(predicted), np.stack(recorded))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("runtime", args.verbose, lambda: run(args))
