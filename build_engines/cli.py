"""`build_engines`: a policy checkpoint of one of the families (or the embedded demo policy) -> bundle of ONNX
parts."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from build_engines.quantize import CALIBRATION_METHODS, DEFAULT_OP_TYPES
from runtime.errors import MobileVLAError, run_cli
from runtime.paths import default_bundle_dir
from runtime.preprocess import COLOR_ORDERS, FRAME_FORMATS, RESIZE_FILTERS, Preprocessing

if TYPE_CHECKING:
    from build_engines.build import BuildResult

log = logging.getLogger("build_engines")
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_engines",
        description="Split a policy (RoboVLMs Kosmos-2 + LSTM by default; --policy picks the family) into ONNX "
                    "parts, check them against the PyTorch reference, and write a self-describing bundle. With no "
                    "--checkpoint, builds the embedded demo bundle from the tiny preset.",
    )
    src = parser.add_argument_group("source")
    src.add_argument("--policy", default=None,
                     help="policy family: robovlms-lstm | robovlms-mlp | feature-fusion | clip-lstm | clip-mlp | "
                          "ensemble, or path/to/adapter.py:ClassName for a team's own (docs/adapters.md). Default: "
                          "the training config's policy_family (or its act_head.type), else robovlms-lstm")
    src.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of the family's adapter, repeatable (ensemble: weights=LSTM,MLP)")
    src.add_argument("--checkpoint", type=Path, help="RoboVLMs .ckpt/.pt (Lightning or plain state dict)")
    src.add_argument("--config", type=Path, help="the training config JSON the checkpoint was trained with")
    src.add_argument("--kosmos-dir", "--backbone-dir", dest="kosmos_dir", type=Path,
                     help="local backbone directory (HF layout: Kosmos-2, or CLIP for the clip families) for frozen "
                          "weights absent from the checkpoint and for tokenizer.json; nothing is downloaded")
    src.add_argument("--tokenizer", type=Path, default=None,
                     help="the tokenizer.json the policy was trained with (default: the one in --kosmos-dir). A "
                          "--checkpoint build needs one of the two; its sha256 is recorded in the manifest")
    src.add_argument("--preset", default="kosmos-2",
                     help="backbone shapes when no --kosmos-dir: tiny | mid | kosmos-2 (mid: the real structure and "
                          "vocabulary at mid widths, for CPU measurements); the clip families: tiny | mid | kosmos-2 "
                          "= ViT-B/32")
    src.add_argument("--random-weights", action="store_true",
                     help="no checkpoint: random weights at --preset's shapes, to test export and latency at real "
                          "size (the velocities mean nothing); needs --output")
    out = parser.add_argument_group("bundle")
    out.add_argument("--output", type=Path, default=None,
                     help=f"bundle directory (required with --checkpoint; demo default: {default_bundle_dir()}). "
                          f"It is replaced whole, so it must be new, empty, or a previous bundle; anything else is "
                          f"refused")
    out.add_argument("--layout", default="robovlms",
                     help="prompt layout the checkpoint was trained with: robovlms | mobilevla_fallback (Kosmos-2 "
                          "trunk families; the text-encoder families use their own)")
    out.add_argument("--instruction", default=None, help="default instruction stored in the bundle")
    out.add_argument("--max-prompt-tokens", type=int, default=32,
                     help="longest prompt (template + instruction, in tokens) the trunk accepts (default 32, at most "
                          "512: the trunk runs at this padded length every frame and its attention grows with its "
                          "square; an instruction is one sentence)")
    out.add_argument("--resize", choices=tuple(RESIZE_FILTERS), default="bilinear",
                     help="PIL resize filter used in training (default bilinear: the Mobile VLA dataset class)")
    out.add_argument("--color-order", choices=COLOR_ORDERS, default="rgb",
                     help="channel order the model was trained on (bgr: BGR frames fed as RGB)")
    out.add_argument("--frame-format", choices=FRAME_FORMATS, default="RGBA",
                     help="uint8 layout the vision graph takes from the capture (default RGBA, as nvvidconv gives)")
    int8 = parser.add_argument_group("INT8 (explicit quantization, calibrated on the robot's episodes)")
    int8.add_argument("--int8", action="store_true",
                      help="also write Q/DQ INT8 parts, gated on held-out episodes (accuracy_report.md in the bundle)")
    int8.add_argument("--calibration-data", type=Path, default=None,
                      help="directory of HDF5 episodes; it must hold episodes (default: the training config's "
                           "train_dataset.data_dir; the demo uses synthetic episodes it generates in its cache)")
    int8.add_argument("--episode-color", choices=("bgr", "rgb"), default="bgr",
                      help="channel order of the stored images (default bgr: the robot's recorder stores bgr8)")
    int8.add_argument("--calibration-frames", type=int, default=64,
                      help="frames sampled across scenarios, episodes and positions (>= 1, default 64)")
    int8.add_argument("--held-out", type=float, default=0.25,
                      help="fraction of each scenario's episodes kept out of calibration for the gate (between 0 "
                           "and 1, default 0.25)")
    int8.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                      help="activation range estimator (default minmax)")
    int8.add_argument("--quantize-ops", default=",".join(DEFAULT_OP_TYPES),
                      help="op types whose inputs get Q/DQ (default MatMul,Gemm)")
    int8.add_argument("--keep-float", default="image_to_text_projection",
                      help="comma-separated node-name substrings kept in float (default image_to_text_projection; "
                           "'' quantizes everything the op types cover)")
    int8.add_argument("--gate-mae", type=float, default=0.02,
                      help="max chunk[0] mean abs error INT8 vs FP32 on held-out frames (in (0, 1], default 0.02)")
    int8.add_argument("--gate-sign", type=float, default=0.98,
                      help="min chunk[0] sign agreement INT8 vs FP32 (in (0, 1], default 0.98)")
    int8.add_argument("--gate-cosine", type=float, default=0.99,
                      help="min per-part mean cosine similarity INT8 vs FP32 (in (0, 1], default 0.99); a NaN "
                           "output fails the gate")
    int8.add_argument("--on-gate-failure", choices=("fallback", "stop"), default="fallback",
                      help="a failing part falls back to FP16 with a warning in the manifest, or the build stops "
                           "(default fallback)")
    trt = parser.add_argument_group("TensorRT engines (built where TensorRT is installed, e.g. on the Jetson)")
    trt.add_argument("--engines-only", action="store_true",
                     help="build the missing/stale engines of an existing --bundle (needs only TensorRT + pycuda)")
    trt.add_argument("--bundle", type=Path, default=None, help="the bundle for --engines-only, --slim or --plan")
    trt.add_argument("--slim", action="store_true",
                     help="delete from --bundle every graph the robot does not run (the CPU's FP32, Q/DQ and CPU "
                          "INT8 graphs), keeping the FP16-typed device graphs; ONNX Runtime cannot run it after")
    trt.add_argument("--no-engines", action="store_true", help="do not build engines even where TensorRT is installed")
    trt.add_argument("--force-engines", action="store_true", help="rebuild engines that are already current")
    trt.add_argument("--workspace-mb", type=int, default=None,
                     help="TensorRT workspace pool in MB, >= 1 (default and cap: 50%% of the memory available at "
                          "build time)")
    plan = parser.add_argument_group("performance plan (from the configuration: no weights, no export, seconds)")
    plan.add_argument("--plan", action="store_true",
                      help="print per part and per frame the FLOPs, bytes, floor latency (FP16, INT8) and memory "
                           "at run and build time on Orin Nano 8GB / Orin NX 16GB / AGX Orin 64GB, then exit; "
                           "uses --preset, --layout, --max-prompt-tokens, --workspace-mb, --keep-float, or the "
                           "shapes of --bundle DIR (and counts its graphs' FLOPs)")
    plan.add_argument("--json", type=Path, default=None, metavar="FILE",
                      help="with --plan: also write the plan as JSON to FILE")
    check = parser.add_argument_group("checks")
    check.add_argument("--parity-frames", type=int, default=12,
                       help="frames in the parity episode (1-1000, default 12)")
    check.add_argument("--parity-tolerance", type=float, default=1e-4,
                       help="max abs error allowed on de-normalized velocities (in (0, 1], default 1e-4); NaN or inf "
                            "outputs always fail")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo policy's weights and of the sampling "
                                                            "(0 to 2**32-1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGINT, interrupt_once) if in_main_thread else None
    try:
        return run_cli("build_engines", args.verbose, lambda: run(args))
    except KeyboardInterrupt:
        # The staging and temporary directories were removed on the way out (context managers); a build killed
        # harder leaves them to the next build's clean-up (output_dir.remove_stale).
        kept = "the bundle's manifest is unchanged" if args.engines_only else (
            "no bundle was written and --output is unchanged")
        print(f"build_engines: interrupted; {kept}", file=sys.stderr)
        return INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def interrupt_once(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C stops the build; further ones are ignored so they cannot cut its clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_engines_only(args: argparse.Namespace) -> int:
    from build_engines.tensorrt_build import build_bundle_engines, check_workspace_mb

    if args.bundle is None:
        raise MobileVLAError("--engines-only needs --bundle DIR (the bundle copied to this device)")
    if args.workspace_mb is not None:
        check_workspace_mb(args.workspace_mb)
    report = build_bundle_engines(args.bundle, args.workspace_mb, args.force_engines)
    print(engines_summary(report, args.bundle))
    return 0


def run_slim(args: argparse.Namespace) -> int:
    from build_engines.slim import slim_bundle

    if args.bundle is None:
        raise MobileVLAError("--slim needs --bundle DIR (the bundle to slim for the device, in place)")
    result = slim_bundle(args.bundle)
    print(f"Slimmed {args.bundle} for the device: removed {len(result.removed)} files ({result.freed_bytes / 1e6:.1f} "
          f"MB), {result.kept_bytes / 1e6:.1f} MB left. ONNX Runtime (the CPU) needs the full bundle; on the Jetson "
          f"run: build_engines --engines-only --bundle {args.bundle}")
    return 0


def engines_summary(report: dict[str, Any], bundle: Path) -> str:
    lines = [f"TensorRT {report['tensorrt']} on {report['device']} (sm {report['compute_capability']}):"]
    for name, record in report["engines"].items():
        lines.append(f"  {name}: {record['file']} {record['size_bytes'] / 1e6:.1f} MB in {record['build_s']} s")
    if not report["engines"]:
        lines.append("  every engine was already current (--force-engines rebuilds)")
    return "\n".join([*lines, f"Run it: runtime --bundle {bundle}"])


def int8_options(args: argparse.Namespace) -> dict[str, Any]:
    from build_engines.int8 import GateSettings
    from build_engines.quantize import QuantSettings
    from calibration.sampling import SampleSettings

    return {
        "int8": args.int8,
        "episodes": args.calibration_data,
        "episode_color": args.episode_color,
        "sample": SampleSettings(frames=args.calibration_frames, held_out_fraction=args.held_out, seed=args.seed),
        "quant": QuantSettings(method=args.calibration_method, op_types=split_list(args.quantize_ops),
                               exclude=split_list(args.keep_float)),
        "gate": GateSettings(mae=args.gate_mae, sign_agreement=args.gate_sign, cosine=args.gate_cosine,
                             on_failure=args.on_gate_failure),
    }


def policy_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise MobileVLAError(f"--policy-option {item!r} is not KEY=VALUE (e.g. --policy-option weights=0.7,0.3)")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def run(args: argparse.Namespace) -> int:
    if args.plan:  # no torch/transformers: the plan comes from the shapes alone
        from build_engines.plan.command import run_plan

        return run_plan(args)
    if args.json is not None:
        raise MobileVLAError("--json FILE writes the performance plan: it needs --plan")
    if args.slim:
        return run_slim(args)
    if args.engines_only:
        return run_engines_only(args)  # no torch/transformers: this is what runs on the Jetson
    # Heavy imports (torch, transformers, onnx) only once the arguments are known to be usable.
    from transformers.utils import logging as hf_logging

    from build_engines.build import DEFAULT_INSTRUCTION, BuildOptions, build_bundle

    hf_logging.disable_progress_bar()
    if args.checkpoint is None and args.random_weights:
        if args.output is None:
            raise MobileVLAError("--output DIR is required with --random-weights")
        output = args.output
    elif args.checkpoint is None:
        if args.policy is not None:
            from build_engines.adapters import adapter_class

            adapter_class(args.policy)  # a mistyped family or file is named as such, before the demo's advice
        if args.policy not in (None, "robovlms-lstm"):
            raise MobileVLAError(f"the embedded demo is a robovlms-lstm policy; for --policy {args.policy} pass "
                                 f"--random-weights --preset tiny --output DIR, or --checkpoint and --config")
        if args.config is not None or args.kosmos_dir is not None:
            raise MobileVLAError("--config/--kosmos-dir need --checkpoint; without it the demo bundle is built")
        if args.tokenizer is not None:
            raise MobileVLAError("--tokenizer needs --checkpoint (or --random-weights); the demo bundle keeps the "
                                 "generated tokenizer its policy was fitted with")
        print("No --checkpoint given: building the embedded demo bundle (tiny preset fitted to synthetic episodes, "
              "written as a RoboVLMs-style checkpoint and imported through the real path).")
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
        tokenizer=args.tokenizer,
        preset=args.preset,
        layout=args.layout,
        instruction=args.instruction or DEFAULT_INSTRUCTION,
        max_prompt_tokens=args.max_prompt_tokens,
        preprocessing=Preprocessing(resize=args.resize, color_order=args.color_order, frame_format=args.frame_format),
        parity_frames=args.parity_frames,
        parity_tolerance=args.parity_tolerance,
        seed=args.seed,
        policy=args.policy,
        policy_options=policy_options(args.policy_option),
        random_weights=args.random_weights and args.checkpoint is None,
        engines=not args.no_engines,
        workspace_mb=args.workspace_mb,
        **int8_options(args),
    )
    result = build_bundle(options)
    print(summary(result))
    return 0


def summary(result: BuildResult) -> str:
    """What was built, sizes, accuracy, where; and what to run next."""
    from build_engines.reports import accuracy_markdown, report_markdown
    from build_engines.tensorrt_build import device_command

    text = report_markdown(result.report)
    if result.int8 is not None:
        text += "\n" + accuracy_markdown(result.int8.report)
    engines = result.report.get("engines")
    if engines:
        text += "\n" + engines_summary(engines, result.bundle)
    else:
        text += (f"\nTensorRT engines: not built ({result.report.get('engines_skipped', 'TensorRT is not installed')}"
                 f"). On the Jetson, with the bundle copied there, run:\n  {device_command(result.bundle)}\n")
    return text + f"\nBundle written to {result.bundle}\nRun it: runtime --bundle {result.bundle}\n"
