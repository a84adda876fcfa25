"""`build_engines`: RoboVLMs checkpoint (or the embedded demo policy) -> bundle of ONNX parts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from runtime.errors import MobileVLAError, run_cli
from runtime.paths import default_bundle_dir
from runtime.preprocess import COLOR_ORDERS, FRAME_FORMATS, RESIZE_FILTERS, Preprocessing

log = logging.getLogger("build_engines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_engines",
        description="Split a RoboVLMs Kosmos-2 policy into vision / trunk / head ONNX parts, check them against the "
                    "PyTorch reference, and write a self-describing bundle. With no --checkpoint, builds the "
                    "embedded demo bundle from the tiny preset.",
    )
    src = parser.add_argument_group("source")
    src.add_argument("--checkpoint", type=Path, help="RoboVLMs .ckpt/.pt (Lightning or plain state dict)")
    src.add_argument("--config", type=Path, help="the training config JSON the checkpoint was trained with")
    src.add_argument("--kosmos-dir", type=Path,
                     help="local Kosmos-2 directory (HF layout) for frozen weights absent from the checkpoint and "
                          "for tokenizer.json; nothing is downloaded")
    src.add_argument("--preset", default="kosmos-2", help="backbone shapes when no --kosmos-dir: kosmos-2 | tiny")
    src.add_argument("--random-weights", action="store_true",
                     help="no checkpoint: random weights at --preset's shapes, to test export and latency at real "
                          "size (the velocities mean nothing); needs --output")
    out = parser.add_argument_group("bundle")
    out.add_argument("--output", type=Path, default=None,
                     help=f"bundle directory (required with --checkpoint; demo default: {default_bundle_dir()})")
    out.add_argument("--layout", default="robovlms",
                     help="prompt layout the checkpoint was trained with: robovlms | mobilevla_fallback")
    out.add_argument("--instruction", default=None, help="default instruction stored in the bundle")
    out.add_argument("--max-prompt-tokens", type=int, default=32,
                     help="longest prompt (template + instruction, in tokens) the trunk accepts (default 32)")
    out.add_argument("--resize", choices=tuple(RESIZE_FILTERS), default="bilinear",
                     help="PIL resize filter used in training (default bilinear: the Mobile VLA dataset class)")
    out.add_argument("--color-order", choices=COLOR_ORDERS, default="rgb",
                     help="channel order the model was trained on (bgr: BGR frames fed as RGB)")
    out.add_argument("--frame-format", choices=FRAME_FORMATS, default="RGBA",
                     help="uint8 layout the vision graph takes from the capture (default RGBA, as nvvidconv gives)")
    check = parser.add_argument_group("checks")
    check.add_argument("--parity-frames", type=int, default=12, help="frames in the parity episode (default 12)")
    check.add_argument("--parity-tolerance", type=float, default=1e-4,
                       help="max abs error allowed on de-normalized velocities (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo policy's weights")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("build_engines", args.verbose, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    # Heavy imports (torch, transformers, onnx) only once the arguments are known to be usable.
    from transformers.utils import logging as hf_logging

    from build_engines.build import DEFAULT_INSTRUCTION, BuildOptions, build_bundle

    hf_logging.disable_progress_bar()
    if args.checkpoint is None and args.random_weights:
        if args.output is None:
            raise MobileVLAError("--output DIR is required with --random-weights")
        output = args.output
    elif args.checkpoint is None:
        if args.config is not None or args.kosmos_dir is not None:
            raise MobileVLAError("--config/--kosmos-dir need --checkpoint; without it the demo bundle is built")
        print("No --checkpoint given: building the embedded demo bundle (tiny preset, random weights written as a "
              "RoboVLMs-style checkpoint and imported through the real path).")
        output = args.output or default_bundle_dir()
    else:
        if args.output is None:
            raise MobileVLAError("--output DIR is required with --checkpoint (the bundle directory to write)")
        output = args.output
    options = BuildOptions(
        output=output,
        checkpoint=args.checkpoint,
        config=args.config,
        kosmos_dir=args.kosmos_dir,
        preset=args.preset,
        layout=args.layout,
        instruction=args.instruction or DEFAULT_INSTRUCTION,
        max_prompt_tokens=args.max_prompt_tokens,
        preprocessing=Preprocessing(resize=args.resize, color_order=args.color_order, frame_format=args.frame_format),
        parity_frames=args.parity_frames,
        parity_tolerance=args.parity_tolerance,
        seed=args.seed,
        random_weights=args.random_weights and args.checkpoint is None,
    )
    result = build_bundle(options)
    print(summary(result.report, result.bundle))
    return 0


def summary(report: dict[str, object], bundle: Path) -> str:
    from build_engines.build import report_markdown

    return report_markdown(report) + (
        f"\nBundle written to {bundle}\nTensorRT engines: not built here (TensorRT is not installed; engine builds "
        f"arrive with `build_engines --int8` on the device).\nRun it: runtime --bundle {bundle}\n"
    )
