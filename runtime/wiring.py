"""Everything the robot runs, wired together: backend, pipeline, source, sinks, instruction listener, health
monitor, systemd notifier and the loop, with the signal handlers that turn every terminating signal into a stop."""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack

from runtime.backends.base import PolicyBackend
from runtime.benchmark import StageRecorder
from runtime.bundle import Bundle
from runtime.config import RuntimeConfig
from runtime.control import InstructionBox, encoder_validator, open_listener
from runtime.health.monitor import HealthMonitor
from runtime.loop import LoopResult, OnResult, RuntimeLoop, zero_summary
from runtime.notify import SystemdNotifier
from runtime.pipeline import OutputSettings, PolicyPipeline
from runtime.safety import MEMORY_GUARD
from runtime.signals import stop_on_signals
from runtime.sinks.dispatch import open_sink
from runtime.sinks.fanout import SinkSet
from runtime.sources.dispatch import open_source

log = logging.getLogger("runtime")
MEMORY_GUARD_EXIT = 3


def output_settings(config: RuntimeConfig, bundle: Bundle) -> OutputSettings:
    action = bundle.manifest.action
    return OutputSettings(
        scale=action.output_scale if config.safety.scale is None else config.safety.scale,
        limit=action.output_limit if config.safety.limit is None else config.safety.limit,
    )


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
        names = config.ros2.names
        source = open_source(config.source, manifest.preprocessing, frames, require_actions,
                             manifest.policy.action_dim, names)
        sinks = SinkSet([open_sink(spec, names) for spec in config.sinks])
        replay_instructions = config.source.parsed.kind == "h5" and config.instruction.text is None
        notifier = SystemdNotifier()
        stack.callback(notifier.close)
        loop = RuntimeLoop(config, pipeline, source, sinks, box, recorder, args.warmup if args.benchmark else 0,
                           frames, on_result, replay_instructions, notifier)
        sinks.on_recovered = loop.on_sink_recovered
        stack.callback(sinks.close)
        # From here a signal stops the loop (which then sends the zero) instead of killing the process; one that
        # arrives during the start-up below makes the loop stop before its first frame.
        stack.enter_context(stop_on_signals(loop.request_stop))
        sinks.start()
        listener = open_listener(config.instruction, box, encoder_validator(pipeline.encoder), names)
        if listener is not None:
            stack.callback(listener.close)
            listener.start()
        monitor = None
        if config.monitor.enabled:
            monitor = HealthMonitor(config.monitor, lambda message: loop.request_stop(message, MEMORY_GUARD_EXIT,
                                                                                      MEMORY_GUARD))
            stack.enter_context(monitor)
            loop.health = lambda: memory_status(monitor)
        if wants_diagnostics(config):
            from runtime.dds.diagnostics import DdsDiagnostics  # Cyclone DDS only when asked for

            diagnostics = DdsDiagnostics(loop.status, lambda: None if monitor is None else monitor.latest, config)
            stack.callback(diagnostics.close)
            diagnostics.start()
        stack.callback(source.stop)
        source.start()
        log.info("running %s on %s (%s schedule, sinks: %s)", bundle.root, source.description,
                 config.schedule.mode, ", ".join(config.sinks) or "none")
        result = loop.run()
        if monitor is not None:
            monitor_summary = monitor.summary()
    log.info("stopped: %s after %d frames; %s", result.exit_reason, result.frames, zero_summary(result.stops))
    return result, monitor_summary


def wants_diagnostics(config: RuntimeConfig) -> bool:
    """`ros2.diagnostics`: on, off, or auto: when the runtime already speaks DDS (a dds sink, a dds: source,
    instruction.control: dds)."""
    if config.ros2.diagnostics != "auto":
        return config.ros2.diagnostics == "on"
    return (any(spec.startswith("dds") for spec in config.sinks) or config.source.parsed.kind == "topic"
            or config.instruction.control == "dds")


def memory_status(monitor: HealthMonitor) -> str:
    reading = monitor.latest
    if reading is None:
        return "memory not read yet"
    return f"RSS {reading.rss_mb:.0f} MB, MemAvailable {reading.mem_available_mb:.0f} MB"

