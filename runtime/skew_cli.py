"""`runtime --source h5:DIR --score --resize-path pipeline [--resize-method PATH]...`: the train-serve skew report of
the camera path's resize (runtime/skew.py), its flag checks (before anything loads) and its output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.bundle import Bundle
from runtime.config import RuntimeConfig
from runtime.errors import MobileVLAError
from runtime.skew import PATH_FORMS, ResizePath, measure_skew, parse_path
from runtime.skew_report import skew_text
from runtime.wiring import output_settings


def resize_paths(args: argparse.Namespace) -> list[ResizePath] | None:
    """The `--resize-method` paths (None: every one this host runs), each checked to run here."""
    if not args.resize_method:
        return None
    from runtime.sources.gstreamer.resize import SCALERS, scaler_available

    paths = [parse_path(text) for text in args.resize_method]
    for path in paths:
        if path.scaler is not None and not scaler_available(path.scaler):
            here = [name for name in SCALERS if scaler_available(name)]
            raise MobileVLAError(
                f"--resize-method {path.name}: {path.scaler} is not available on this host, so its methods cannot be "
                f"measured here (nvvidconv needs a Jetson with JetPack's GStreamer plugins); run the same command on "
                f"the robot, or measure what this host has: {', '.join(f'{s}:METHOD' for s in here) or 'none'}"
            )
    return paths


def check_skew_flags(args: argparse.Namespace) -> None:
    """`--resize-path` belongs to `--score`, `--resize-method` to `--resize-path pipeline`; refused before the run."""
    if args.resize_path is not None and not args.score:
        raise MobileVLAError(f"--resize-path {args.resize_path} picks how --score resizes the recorded episodes; use "
                             f"it with --score --source h5:DIR")
    if args.resize_method and args.resize_path != "pipeline":
        raise MobileVLAError(f"--resize-method picks the paths the skew report measures ({PATH_FORMS}); add "
                             f"--resize-path pipeline")
    if args.resize_path == "pipeline":
        resize_paths(args)


def score_skew(args: argparse.Namespace, config: RuntimeConfig, bundle: Bundle, frames: int | None) -> int:
    """Replay the episodes through each resize path and print chunk[0]'s skew against the training resize."""
    precision = args.precision or ("fp32" if config.precision == "auto" else config.precision)
    report = measure_skew(bundle, Path(config.source.parsed.arg), resize_paths(args), color=config.source.h5_color,
                          precision=precision, threads=config.threads, frames=frames,
                          instruction=config.instruction.text, output=output_settings(config, bundle),
                          source=config.source)
    print(skew_text(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"skew JSON written to {args.json}")
    return 0
