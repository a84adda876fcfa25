"""`runtime`: run a bundle on a camera, a video or recorded episodes and drive the robot; or benchmark, or score."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import TextIO

import numpy as np
import yaml

from runtime.backend import PolicyBackend, onnx_backend
from runtime.benchmark import ClockStatus, StageRecorder, jetson_clocks, summarize, write_plot
from runtime.bundle import Bundle, load_bundle
from runtime.config import (
    BACKENDS,
    CONTROL_KINDS,
    RUNTIME_PRECISIONS,
    SCHEDULE_MODES,
    RuntimeConfig,
    load_config,
    parse_config,
    with_section,
)
from runtime.control import InstructionBox, open_listener
from runtime.errors import MobileVLAError, run_cli
from runtime.loop import LOOP_STAGES, LoopResult, OnResult, RuntimeLoop
from runtime.monitor import HealthMonitor, MonitorSettings
from runtime.notify import SystemdNotifier
from runtime.paths import default_bundle_dir
from runtime.pipeline import OutputSettings, PolicyPipeline, StepResult
from runtime.safety import MEMORY_GUARD
from runtime.scoring import Scores, score, scores_table
from runtime.sinks import SinkSet, VelocityCommand, open_sink
from runtime.sources import SOURCE_FORMS, CaptureResult, open_source

log = logging.getLogger("runtime")
MEMORY_GUARD_EXIT = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runtime",
        description="Run a Mobile VLA bundle on the robot: frames -> vision -> trunk -> head -> schedule -> safety -> "
                    "velocity commands to the sinks. Settings come from --config (else /etc/mobile-vla/runtime.yaml, "
                    "else built-in defaults); flags override them. See the README for every setting.",
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
                        help="auto: int8 when the bundle has INT8 parts (fp16 elsewhere on TensorRT, fp32 on ONNX "
                             "Runtime); fp16 is TensorRT only, fp32 ONNX Runtime only")
    parser.add_argument("--source", default=None,
                        help=f"frame source: {SOURCE_FORMS} (default: config source.spec, `synthetic`)")
    parser.add_argument("--h5-color", choices=("bgr", "rgb"), default=None,
                        help="channel order of the images stored in h5 episodes (the robot's recorder stores bgr8)")
    parser.add_argument("--instruction", default=None,
                        help="language instruction (default: config, else the episode's, else the bundle's default)")
    parser.add_argument("--sink", action="append", default=None, metavar="SPEC",
                        help="where velocity commands go, repeatable: stdout, udp:HOST:PORT, serial:DEVICE[:BAUD], "
                             "ros2[:TOPIC], none (default: config `sinks`, stdout; none with --benchmark/--score)")
    parser.add_argument("--schedule", choices=SCHEDULE_MODES, default=None,
                        help="chunk0: execute chunk[0] of each new chunk (RoboVLMs); ensemble: temporal ensembling; "
                             "async: a control loop publishes at --rate-hz from the newest chunk")
    parser.add_argument("--rate-hz", type=float, default=None, help="async control loop rate (default 30)")
    parser.add_argument("--control", choices=CONTROL_KINDS, default=None,
                        help="how instructions change while running (default auto: ROS 2 topic when rclpy imports, "
                             "else UDP control messages on 127.0.0.1:5610; none with --benchmark/--score)")
    parser.add_argument("--frames", type=int, default=None,
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
    parser.add_argument("--warmup", type=int, default=10, help="benchmark warm-up frames, not timed (default 10)")
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
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of bundle files on load")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def effective_config(args: argparse.Namespace) -> RuntimeConfig:
    """The config file, then the flags on top."""
    config = load_config(args.config)
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
    config = with_section(config, "instruction", text=args.instruction, control="none" if quiet else args.control)
    config = with_section(config, "schedule", mode=args.schedule, rate_hz=args.rate_hz)
    config = with_section(config, "safety", scale=args.output_scale, limit=args.output_limit)
    return parse_config(config_as_dict(config), config.origin)  # flags get the same validation as the file


def output_settings(config: RuntimeConfig, bundle: Bundle) -> OutputSettings:
    action = bundle.manifest.action
    return OutputSettings(
        scale=action.output_scale if config.safety.scale is None else config.safety.scale,
        limit=action.output_limit if config.safety.limit is None else config.safety.limit,
    )


def onnx_precision(wanted: str, bundle: Bundle) -> str:
    if wanted == "fp16":
        raise MobileVLAError("--precision fp16 runs on TensorRT only; ONNX Runtime runs fp32 or int8 (use "
                             "--backend tensorrt on a Jetson, or --precision fp32/int8)")
    if wanted == "int8" and not bundle.manifest.has_int8:
        raise MobileVLAError(f"bundle {bundle.root} has no INT8 parts; build it with `build_engines --int8`, or use "
                             f"--precision fp32")
    if wanted == "auto":
        return "int8" if bundle.manifest.has_int8 else "fp32"
    return wanted


def tensorrt_precision(wanted: str, bundle: Bundle) -> str:
    if wanted == "fp32":
        raise MobileVLAError("TensorRT engines are fp16 or int8; use --precision fp16/int8/auto, or --backend "
                             "onnxruntime for fp32")
    if wanted == "auto":
        return "int8" if bundle.manifest.has_int8 else "fp16"
    return wanted


def choose_backend(config: RuntimeConfig, bundle: Bundle) -> PolicyBackend:
    """TensorRT when asked for or when auto finds runnable engines; else ONNX Runtime. The choice is logged."""
    from runtime import tensorrt_backend

    if config.precision == "fp32" and config.backend == "auto":
        log.info("backend onnxruntime (--precision fp32: TensorRT engines are fp16/int8)")
    else:
        precision = tensorrt_precision(config.precision, bundle)
        if tensorrt_backend.choose_backend(config.backend, bundle, precision).backend == "tensorrt":
            # load_bundle has already hashed the engine files when verification is on
            return tensorrt_backend.open_tensorrt_backend(bundle, precision, verify=False)
    backend = onnx_backend(bundle, onnx_precision(config.precision, bundle), config.threads)
    log.info("running %s", backend.name)
    return backend


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
    return stack.enter_context(Path(target).open("w"))


@contextmanager
def stop_on_signals(loop: RuntimeLoop) -> Iterator[None]:
    """SIGTERM/SIGINT end the loop after the current frame; the loop then publishes zero before the process exits."""
    def handler(number: int, frame: FrameType | None) -> None:
        loop.request_stop(f"signal {signal.Signals(number).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def initial_instruction(config: RuntimeConfig, bundle: Bundle) -> str | None:
    text = config.instruction.text
    if text is None and config.instruction.use_bundle_default:
        return bundle.manifest.prompt.default_instruction
    return text


def run_policy(config: RuntimeConfig, bundle: Bundle, backend: PolicyBackend, args: argparse.Namespace,
               recorder: StageRecorder | None = None, on_result: OnResult | None = None,
               frames: int | None = None, require_actions: bool = False) -> tuple[LoopResult, dict[str, object]]:
    """Everything the robot runs, wired together; returns when the source ends, a limit, a signal or the memory guard
    stops it, with the health monitor's summary."""
    manifest = bundle.manifest
    monitor_summary: dict[str, object] = {}
    with ExitStack() as stack:
        stack.enter_context(backend)
        instruction = initial_instruction(config, bundle)
        pipeline = PolicyPipeline(bundle, backend, instruction, output_settings(config, bundle),
                                  config.instruction.over_long)
        box = InstructionBox(instruction)
        source = open_source(config.source, manifest.preprocessing, frames, require_actions,
                             manifest.policy.action_dim)
        sinks = SinkSet([open_sink(spec) for spec in config.sinks])
        replay_instructions = config.source.spec.startswith("h5:") and config.instruction.text is None
        notifier = SystemdNotifier()
        stack.callback(notifier.close)
        loop = RuntimeLoop(config, pipeline, source, sinks, box, recorder, args.warmup if args.benchmark else 0,
                           frames, on_result, replay_instructions, notifier)
        sinks.on_recovered = loop.on_sink_recovered
        stack.callback(sinks.close)
        sinks.start()
        listener = open_listener(config.instruction, box)
        if listener is not None:
            stack.callback(listener.close)
            listener.start()
        monitor = None
        if config.monitor.enabled:
            settings = MonitorSettings(**{k: v for k, v in vars(config.monitor).items() if k != "enabled"})
            monitor = HealthMonitor(settings, lambda message: loop.request_stop(message, MEMORY_GUARD_EXIT,
                                                                                 MEMORY_GUARD))
            stack.enter_context(monitor)
            loop.health = lambda: memory_status(monitor)
        stack.callback(source.stop)
        source.start()
        log.info("running %s on %s (%s schedule, sinks: %s)", bundle.root, source.description,
                 config.schedule.mode, ", ".join(config.sinks) or "none")
        with stop_on_signals(loop):
            result = loop.run()
        if monitor is not None:
            monitor_summary = monitor.summary()
    log.info("stopped: %s after %d frames; zero commands: %s", result.exit_reason, result.frames,
             result.stops or "none")
    return result, monitor_summary


def memory_status(monitor: HealthMonitor) -> str:
    reading = monitor.latest
    if reading is None:
        return "memory not read yet"
    return f"RSS {reading.rss_mb:.0f} MB, MemAvailable {reading.mem_available_mb:.0f} MB"


def config_as_dict(config: RuntimeConfig) -> dict[str, object]:
    data = asdict(config)
    data["bundle"] = None if config.bundle is None else str(config.bundle)
    data["sinks"] = list(config.sinks)
    data["source"]["sensor_mode"] = list(config.source.sensor_mode)
    data.pop("origin")
    return data


def run(args: argparse.Namespace) -> int:
    config = effective_config(args)
    if args.print_config:
        print(f"# effective config ({config.origin} + flags)")
        print(yaml.safe_dump(config_as_dict(config), sort_keys=False), end="")
        return 0
    if args.score and args.benchmark:
        raise MobileVLAError("--score and --benchmark are separate runs; pick one")
    if args.score and not config.source.spec.startswith("h5:"):
        raise MobileVLAError(f"--score needs recorded actions: use --source h5:DIR (got --source {config.source.spec})")
    frames = args.frames if args.frames is not None else (args.warmup + 200 if args.benchmark else None)
    if args.benchmark and frames is not None and frames <= args.warmup:
        raise MobileVLAError(f"--frames {frames} leaves nothing to time after --warmup {args.warmup}; raise --frames")
    bundle = load_bundle(config.bundle or default_bundle_dir(), verify_hashes=config.verify_bundle)
    log.info("config: %s", config.origin)
    if args.score:
        return score_runs(args, config, bundle, frames)
    backend = choose_backend(config, bundle)
    if args.benchmark:
        return benchmark(args, config, bundle, backend, frames)
    with ExitStack() as stack:
        output = open_output(stack, args.output)
        on_result = None
        if output is not None:
            def on_result(got: CaptureResult, result: StepResult, command: VelocityCommand | None,
                          instruction: str) -> None:
                output.write(record_json(got, result, command, instruction) + "\n")
        result, _ = run_policy(config, bundle, backend, args, None, on_result, frames)
    if result.frames == 0 and result.exit_reason == "end of source":
        raise MobileVLAError(f"source {config.source.spec} delivered no frames")
    if result.exit_code == MEMORY_GUARD_EXIT:
        log.error("%s", result.exit_reason)
    return result.exit_code


def benchmark(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, backend: PolicyBackend,
              frames: int | None) -> int:
    recorder = StageRecorder(LOOP_STAGES, frames or 100_000)
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


def score_runs(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, frames: int | None) -> int:
    if args.precision is None and config.precision == "auto" and bundle.manifest.has_int8:
        runs = ["fp32", "int8"]
    else:
        runs = [onnx_precision(config.precision, bundle)]
    results = {precision: score_run(args, config, bundle, precision, frames) for precision in runs}
    print(f"chunk[0] vs recorded actions, {config.source.spec[3:]}:")
    print(scores_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2) + "\n")
        print(f"scores JSON written to {args.json}")
    return 0


def score_run(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, precision: str,
              frames: int | None) -> Scores:
    """The real runtime loop over recorded episodes (ONNX Runtime); chunk[0] against each frame's recorded action."""
    dim = bundle.manifest.policy.action_dim
    predicted: list[np.ndarray] = []
    recorded: list[np.ndarray] = []

    def collect(got: CaptureResult, result: StepResult, command: VelocityCommand | None, instruction: str) -> None:
        assert got.recorded_action is not None  # require_actions: the reader refused episodes without them
        predicted.append(result.velocity[:dim].copy())
        recorded.append(got.recorded_action[:dim])

    backend = onnx_backend(bundle, precision, config.threads)
    result, _ = run_policy(config, bundle, backend, args, None, collect, frames, require_actions=True)
    if result.frames == 0:
        raise MobileVLAError(f"source {config.source.spec} delivered no frames to score")
    log.info("scored %d frames with the %s graphs", result.frames, precision)
    return score(np.stack(predicted), np.stack(recorded))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("runtime", args.verbose, lambda: run(args))
