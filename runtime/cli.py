"""`runtime`: run a bundle on a camera, a video or recorded episodes and drive the robot; or benchmark, or score."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tracemalloc
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import yaml

from runtime.backends.base import PolicyBackend
from runtime.backends.select import open_backend
from runtime.benchmark import StageRecorder, summarize, write_plot
from runtime.bundle import Bundle, load_bundle
from runtime.cli_checks import check_outputs, count_type
from runtime.config import (
    BACKENDS,
    CONTROL_KINDS,
    RUNTIME_PRECISIONS,
    SCHEDULE_MODES,
    V4L2_FORMATS,
    RuntimeConfig,
    SourceConfig,
    config_as_dict,
    with_overrides,
    with_section,
)
from runtime.config_file import load_config
from runtime.errors import MobileVLAError, run_cli
from runtime.host import ClockStatus, jetson_clocks
from runtime.loop import loop_stages
from runtime.paths import default_bundle_dir
from runtime.pipeline import StepResult
from runtime.ros.args import RosArgs, split_ros_args
from runtime.score_episodes import score_runs
from runtime.sinks.base import VelocityCommand
from runtime.sinks.dispatch import SINK_FORMS
from runtime.skew import PATH_FORMS, RESIZE_PATHS
from runtime.skew_cli import check_skew_flags, score_skew
from runtime.sources.base import CaptureResult
from runtime.sources.spec import FLIP_NAMES, SOURCE_FORMS, V4l2Spec, flip_method
from runtime.wiring import MEMORY_GUARD_EXIT, run_policy

log = logging.getLogger("runtime")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runtime",
        description="Run a Mobile VLA bundle on the robot: frames -> vision -> trunk -> head -> schedule -> safety -> "
                    "velocity commands to the sinks. Settings come from --config (else /etc/mobile-vla/runtime.yaml, "
                    "else built-in defaults); flags override them. As a ROS 2 node it also takes --ros-args "
                    "(-r __ns:=/robot1, -r cmd_vel:=TOPIC, -p KEY:=VALUE for any config key, --params-file, "
                    "--log-level) after its own flags. Every setting: docs/runtime.md.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config file (default: "
                        "/etc/mobile-vla/runtime.yaml when it exists, else built-in defaults)")
    parser.add_argument("--print-config", action="store_true", help="print the effective config as YAML and exit")
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"bundle directory (default: config `bundle`, $MOBILE_VLA_BUNDLE or "
                             f"{default_bundle_dir()})")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="tensorrt (engines in the bundle, needs TensorRT + pycuda + a GPU), onnxruntime (CPU), or "
                             "auto: TensorRT when its engines can run here, else ONNX Runtime; the choice is logged")
    parser.add_argument("--precision", choices=RUNTIME_PRECISIONS, default=None,
                        help="auto: on TensorRT int8 when the bundle has INT8 parts, else fp16; on ONNX Runtime, per "
                             "part, the CPU INT8 form where the bundle's measurement says it is faster than FP32, "
                             "else fp32 (each choice and its reason are logged). int8 on ONNX Runtime runs the CPU "
                             "INT8 forms (an older bundle's Q/DQ graphs, slower, with a warning). fp16 is TensorRT "
                             "only, fp32 ONNX Runtime only")
    parser.add_argument("--source", default=None,
                        help=f"frame source: {SOURCE_FORMS} (default: config source.spec, `synthetic`)")
    camera = parser.add_argument_group("camera (jetson-utils' names; config `source`)")
    camera.add_argument("--input-width", type=int, default=None, metavar="PX",
                        help="csi/test: sensor mode width; v4l2: the width asked of the camera (config "
                             "source.sensor_mode)")
    camera.add_argument("--input-height", type=int, default=None, metavar="PX",
                        help="csi/test: sensor mode height; v4l2: the height asked of the camera (config "
                             "source.sensor_mode)")
    camera.add_argument("--input-rate", type=int, default=None, metavar="FPS", help="csi/test/v4l2: frame rate "
                        "(config source.fps)")
    camera.add_argument("--input-codec", choices=V4L2_FORMATS, default=None,
                        help="v4l2: capture raw, mjpeg or h264; auto (default) picks from the camera's caps: raw when "
                             "it reaches the size and rate, else mjpeg, else h264 (config source.v4l2_format; "
                             "rtp:// takes ?codec= instead)")
    camera.add_argument("--input-flip", choices=FLIP_NAMES, default=None,
                        help="flip/rotate as jetson-utils does, including its swap of none and rotate-180 on CSI "
                             "cameras (config source.flip_method holds nvvidconv's 0-7 numbering)")
    parser.add_argument("--h5-color", choices=("bgr", "rgb"), default=None,
                        help="channel order of the images stored in h5 episodes (the robot's recorder stores bgr8)")
    parser.add_argument("--instruction", default=None,
                        help="language instruction (default: config, else the episode's, else the bundle's default)")
    parser.add_argument("--sink", action="append", default=None, metavar="SPEC",
                        help=f"where velocity commands go, repeatable: {SINK_FORMS}, none (default: config `sinks`, "
                             f"stdout; none with --benchmark/--score)")
    parser.add_argument("--schedule", choices=SCHEDULE_MODES, default=None,
                        help="chunk0: execute chunk[0] of each new chunk (RoboVLMs); ensemble: temporal ensembling; "
                             "async: a control loop publishes at --rate-hz from the newest chunk")
    parser.add_argument("--rate-hz", type=float, default=None, help="async control loop rate (default 30)")
    parser.add_argument("--control", choices=CONTROL_KINDS, default=None,
                        help="how instructions change while running (default auto: ROS 2 topic when rclpy imports, "
                             "else UDP control messages on 127.0.0.1:5610; dds: the ROS 2 topic through Cyclone DDS, "
                             "no ROS install; none with --benchmark/--score)")
    parser.add_argument("--frames", type=count_type(1), default=None,
                        help="stop after this many policy frames (default: until the source ends or a signal; "
                             "200 after warm-up with --benchmark)")
    parser.add_argument("--output", default=None,
                        help="per-frame records as JSON lines (frame, chunk, history, command): `-` for stdout or a "
                             "file path (default: none)")
    parser.add_argument("--output-scale", type=float, default=None,
                        help="multiply de-normalized velocities by this (default: config safety.scale, else the "
                             "bundle's, usually 1.0)")
    parser.add_argument("--output-limit", type=float, default=None,
                        help="clip velocities to ±this after scaling (default: config safety.limit, else the bundle's)")
    parser.add_argument("--benchmark", action="store_true",
                        help="warm up, then time every stage over --frames frames: p50/p90/p99/max, FPS, jitter, "
                             "capture-to-command latency, peak memory, monitor readings, Jetson clocks")
    parser.add_argument("--warmup", type=count_type(0), default=10,
                        help="benchmark warm-up frames, not timed (default 10)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the benchmark report (or, with --score, the scores) as JSON to this file")
    parser.add_argument("--plot", type=Path, default=None, help="benchmark: write a latency plot (PNG) here")
    parser.add_argument("--alloc-check", action="store_true",
                        help="benchmark: measure memory allocated and kept over the timed frames (tracemalloc; "
                             "slows the loop, so timings of that run are not representative)")
    parser.add_argument("--score", action="store_true",
                        help="score chunk[0] against the episodes' recorded actions (needs --source h5:DIR): MAE, "
                             "accuracy within 0.3/0.2/0.15, R², Pearson, direction; FP32 and INT8 side by side "
                             "unless --precision picks one")
    parser.add_argument("--resize-path", choices=RESIZE_PATHS, default=None,
                        help="with --score: training (default) resizes as training did and scores against the recorded "
                             "actions; pipeline pushes the episodes through the capture pipeline's own scaler and "
                             "reports chunk[0]'s skew against the training resize, one row per method")
    parser.add_argument("--resize-method", action="append", default=None, metavar="PATH",
                        help=f"with --resize-path pipeline, repeatable: measure only these ({PATH_FORMS}; default: "
                             f"every one this host runs)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of bundle files on load")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def effective_config(args: argparse.Namespace) -> RuntimeConfig:
    """The config file, then `--ros-args` (remaps, `-p` parameters), then the flags on top."""
    config = load_config(args.config)
    ros: RosArgs | None = getattr(args, "ros", None)
    if ros is not None:
        config = with_overrides(config, ros.config_overrides(), "--ros-args")
    quiet = args.benchmark or args.score
    sinks = args.sink if args.sink is not None else ([] if quiet else list(config.sinks))
    config = replace(
        config,
        bundle=args.bundle or config.bundle,
        backend=args.backend or config.backend,
        precision=args.precision or config.precision,
        threads=config.threads if args.threads is None else args.threads,
        verify_bundle=config.verify_bundle and not args.no_verify,
        sinks=tuple(spec for spec in sinks if spec != "none"),
    )
    config = with_section(config, "source", spec=args.source, h5_color=args.h5_color)
    config = with_section(config, "source", **camera_flags(args, config.source))
    config = with_section(config, "instruction", text=args.instruction, control="none" if quiet else args.control)
    config = with_section(config, "schedule", mode=args.schedule, rate_hz=args.rate_hz)
    # every replace() re-runs the fields' rules: flags meet the same checks as the file (runtime/settings.py)
    return with_section(config, "safety", scale=args.output_scale, limit=args.output_limit)


def camera_flags(args: argparse.Namespace, source: SourceConfig) -> dict[str, Any]:
    """The `--input-width/height/rate/flip/codec` flags as `source` keys (None where not given)."""
    width, height = source.sensor_mode
    mode = None if args.input_width is None and args.input_height is None else (
        width if args.input_width is None else args.input_width, height if args.input_height is None else
        args.input_height)
    flip = None if args.input_flip is None else flip_method(args.input_flip, source.parsed)
    if args.input_codec is not None and not isinstance(source.parsed, V4l2Spec):
        raise MobileVLAError(f"--input-codec {args.input_codec}: applies to v4l2 cameras (config source.v4l2_format), "
                             f"not to source {source.spec!r}; an rtp:// source takes ?codec=h264|h265|mjpeg")
    return {"sensor_mode": mode, "fps": args.input_rate, "flip_method": flip, "v4l2_format": args.input_codec}


def record_json(got: CaptureResult, result: StepResult, command: VelocityCommand | None,
                instruction: str) -> str:
    record: dict[str, object] = {
        "capture_time": round(got.capture_time, 6),
        "episode": got.episode,
        "frame": got.index - 1 if got.episode_frame is None else got.episode_frame,
        "instruction": instruction,
        "velocity": [round(float(v), 6) for v in result.velocity],
        "chunk": [[round(float(v), 6) for v in row] for row in result.chunk],
        "history": result.history_len,
    }
    if command is not None:
        record["command"] = {"seq": command.seq, "linear_x": command.linear_x, "linear_y": command.linear_y,
                             "angular_z": command.angular_z, "stop": command.stop, "reason": command.reason}
    if result.gripper_prob is not None:
        record["gripper_prob"] = [round(float(v), 6) for v in result.gripper_prob]
    if got.recorded_action is not None:
        record["recorded_action"] = [round(float(v), 6) for v in got.recorded_action]
    return json.dumps(record)


def open_output(stack: ExitStack, target: str | None) -> TextIO | None:
    if target is None or target == "none":
        return None
    if target == "-":
        return sys.stdout
    try:
        return stack.enter_context(Path(target).open("w"))
    except OSError as exc:
        raise MobileVLAError(f"cannot open --output {target}: {exc.strerror}; write elsewhere") from exc


def run(args: argparse.Namespace) -> int:
    config = effective_config(args)
    if args.print_config:
        print(f"# effective config ({config.origin} + flags)")
        print(yaml.safe_dump(config_as_dict(config), sort_keys=False), end="")
        return 0
    if args.score and args.benchmark:
        raise MobileVLAError("--score and --benchmark are separate runs; pick one")
    if args.score and config.source.parsed.kind != "h5":
        raise MobileVLAError(f"--score needs recorded actions: use --source h5:DIR (got --source {config.source.spec})")
    frames = args.frames if args.frames is not None else (args.warmup + 200 if args.benchmark else None)
    if args.benchmark and frames is not None and frames <= args.warmup:
        raise MobileVLAError(f"--frames {frames} leaves nothing to time after --warmup {args.warmup}; raise --frames")
    check_outputs(args)
    check_skew_flags(args)
    bundle = load_bundle(config.bundle or default_bundle_dir(), verify_hashes=config.verify_bundle)
    log.info("config: %s", config.origin)
    if args.score:
        return (score_skew if args.resize_path == "pipeline" else score_runs)(args, config, bundle, frames)
    backend = open_backend(config, bundle)
    if args.benchmark:
        return benchmark(args, config, bundle, backend, frames)
    with ExitStack() as stack:
        output = open_output(stack, args.output)
        on_result = None
        if output is not None:
            def on_result(got: CaptureResult, result: StepResult, command: VelocityCommand | None,
                          instruction: str) -> None:
                try:
                    output.write(record_json(got, result, command, instruction) + "\n")
                except OSError as exc:  # disk full, a closed pipe: the loop sends the zero, then we stop
                    raise MobileVLAError(f"cannot write the per-frame records to --output {args.output}: "
                                         f"{exc.strerror or exc}; the robot was stopped") from exc
        result, _ = run_policy(config, bundle, backend, args, None, on_result, frames)
    if result.frames == 0 and result.exit_reason == "end of source":
        raise MobileVLAError(f"source {config.source.spec} delivered no frames")
    if result.exit_code == MEMORY_GUARD_EXIT:
        log.error("%s", result.exit_reason)
    return result.exit_code


def benchmark(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, backend: PolicyBackend,
              frames: int | None) -> int:
    recorder = StageRecorder(loop_stages(bundle.plan.frame_parts), frames or 100_000)
    clocks: ClockStatus | None = jetson_clocks()
    tracing = AllocationTrace(args.warmup) if args.alloc_check else None
    result, monitor = run_policy(config, bundle, backend, args, recorder,
                                 tracing.on_result if tracing else None, frames)
    if recorder.count == 0:
        raise MobileVLAError(f"source {config.source.spec} delivered no frames after the {args.warmup} warm-up "
                             f"frames ({result.exit_reason})")
    report = summarize(recorder, args.warmup, result.wall_s, backend.name, config.source.spec)
    report.monitor = monitor
    report.clocks = clocks
    report.instruction_parts = {name: {"runs": backend.instruction_runs, "last_ms": backend.stage_ms[name]}
                                for name in bundle.plan.instruction_parts}
    report.stops = result.stops
    if tracing is not None:
        report.alloc_growth_kb = tracing.growth_kb()
        report.warnings.append("--alloc-check: tracemalloc was on, so these timings are slower than normal")
    if clocks is not None and clocks.warning():
        report.warnings.append(str(clocks.warning()))
        log.warning("%s", clocks.warning())
    print(report.table())
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"benchmark JSON written to {args.json}")
    if args.plot is not None:
        write_plot(recorder, report, args.plot)
        print(f"latency plot written to {args.plot}")
    return result.exit_code


class AllocationTrace:
    """tracemalloc from the end of warm-up to the last frame: how much memory the steady state kept."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self._seen = 0
        self._start = 0
        self._end = 0

    def on_result(self, got: CaptureResult, result: StepResult, command: VelocityCommand | None,
                  instruction: str) -> None:
        self._seen += 1
        if self._seen == self.warmup:
            gc.collect()  # cyclic garbage of the warm-up is not growth
            tracemalloc.start()
            self._start = tracemalloc.get_traced_memory()[0]
        elif self._seen > self.warmup and tracemalloc.is_tracing():
            self._end = tracemalloc.get_traced_memory()[0]

    def growth_kb(self) -> float:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        return (self._end - self._start) / 1024.0


def main(argv: list[str] | None = None) -> int:
    own, ros = split_ros_args_or_exit(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    args.ros = ros
    level = ros.log_level if ros is not None else None
    verbose = args.verbose or level == logging.DEBUG

    def body() -> int:
        if level is not None and not verbose:
            logging.getLogger().setLevel(level)
        return run(args)

    return run_cli("runtime", verbose, body)


def split_ros_args_or_exit(argv: list[str]) -> tuple[list[str], RosArgs | None]:
    """`split_ros_args`, with a bad ROS argument reported as argparse reports a bad flag (usage, exit 2)."""
    try:
        return split_ros_args(argv)
    except MobileVLAError as exc:
        build_parser().error(str(exc))
