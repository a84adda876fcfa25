"""`build_engines --plan [--preset P] [--layout L] [--max-prompt-tokens N] [--bundle DIR] [--json FILE]`, and the plan
a build writes into its build report."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from build_engines.plan import Plan, make_plan
from build_engines.plan.graph import count_onnx_file
from build_engines.plan.model import PRESET_NAMES, HeadDims, ModelDims, preset_dims
from build_engines.plan.report import plan_dict, plan_text
from build_engines.tensorrt_build import check_workspace_mb  # imports no TensorRT, torch or onnx
from runtime.bundle import MANIFEST_NAME, PolicySettings
from runtime.errors import MobileVLAError, check_range
from runtime.preprocess import check_choice
from runtime.prompt import LAYOUTS, PromptSettings
from runtime.specs import PART_NAMES

log = logging.getLogger("build_engines.plan")
MAX_PROMPT_TOKENS = 512  # build_engines.build.MAX_PROMPT_TOKENS (that module imports torch; a test keeps them equal)
PROJECTION = "image_to_text_projection"


def projection_int8(keep_float: str) -> bool:
    """Whether --keep-float leaves the image-to-text projection to be quantized (its node names contain it)."""
    kept = [item.strip() for item in keep_float.split(",") if item.strip()]
    return not any(item in f"/{PROJECTION}/dense/MatMul" for item in kept)


def check_json_path(path: Path) -> None:
    if path.is_dir():
        raise MobileVLAError(f"--json {path} is a directory; pass the path of the JSON file to write, e.g. "
                             f"{path / 'plan.json'}")
    if not path.parent.is_dir():
        raise MobileVLAError(f"--json {path}: the directory {path.parent} does not exist; create it first or pass "
                             f"a path in an existing directory")


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan (and write it as JSON with --json); exits 0 without building anything."""
    if args.json is not None:
        check_json_path(args.json)
    if args.workspace_mb is not None:
        check_workspace_mb(args.workspace_mb)
    quantize_projection = projection_int8(args.keep_float)
    if args.bundle is not None:
        plan = bundle_plan(args.bundle, args.workspace_mb, quantize_projection, count_graphs=True)
    else:
        check_choice("preset", args.preset, PRESET_NAMES)
        check_choice("layout", args.layout, LAYOUTS)
        check_range("--max-prompt-tokens", args.max_prompt_tokens, 1, MAX_PROMPT_TOKENS,
                    fix="the trunk is exported for this many prompt tokens and runs at that length every frame")
        dims = preset_dims(args.preset, args.layout, args.max_prompt_tokens)
        plan = make_plan(dims, args.workspace_mb, quantize_projection,
                         origin=f"the {args.preset} preset's configuration")
    print(plan_text(plan))
    if args.json is not None:
        args.json.write_text(json.dumps(plan_dict(plan), indent=2) + "\n")
        print(f"Plan written to {args.json}")
    return 0


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise MobileVLAError(f"{root} has no {MANIFEST_NAME}: pass a bundle directory written by build_engines")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MobileVLAError(f"{path} is not readable JSON ({exc}); rebuild the bundle") from exc
    return data


def manifest_dims(manifest: dict[str, Any], root: Path) -> ModelDims:
    """The bundle's shapes: prompt and head from its manifest, the backbone from the preset it was built from."""
    try:
        prompt = PromptSettings.from_dict(manifest["prompt"])
        policy = PolicySettings.from_dict(manifest["policy"])
        preset = str(manifest.get("source", {}).get("preset", "kosmos-2"))
    except (KeyError, TypeError, ValueError) as exc:
        raise MobileVLAError(f"{root / MANIFEST_NAME} lacks the prompt/policy settings the plan needs ({exc}); "
                             f"rebuild the bundle with this build_engines") from exc
    if preset not in PRESET_NAMES:  # "from kosmos_dir": microsoft/kosmos-2-patch14-224, the kosmos-2 shapes
        log.info("bundle preset %r: planning with the kosmos-2 backbone shapes", preset)
        preset = "kosmos-2"
    head = HeadDims.of(policy.lstm_hidden, policy.head_variant, policy.chunk, policy.action_dim, policy.window)
    dims = preset_dims(preset, prompt.layout, prompt.max_prompt_tokens, head)
    if dims.text.width != policy.text_dim:
        raise MobileVLAError(f"{root}: the bundle's text width is {policy.text_dim}, the {preset} preset's "
                             f"{dims.text.width}; the plan knows the presets {', '.join(PRESET_NAMES)} only")
    return dims


PLANNED_FAMILY = "robovlms-lstm"


def bundle_plan(root: Path, workspace_mb: int | None = None, quantize_projection: bool = False,
                count_graphs: bool = False, origin: str | None = None) -> Plan:
    """The plan of a bundle (or a build's staging directory); with `count_graphs`, its graphs' FLOPs beside it."""
    if not root.is_dir():
        raise MobileVLAError(f"--bundle {root} is not a directory; pass a bundle written by build_engines")
    manifest = read_manifest(root)
    family = manifest.get("policy", {}).get("family", PLANNED_FAMILY)
    if family != PLANNED_FAMILY:
        raise MobileVLAError(f"the performance plan models the {PLANNED_FAMILY} family's parts (Kosmos-2 vision, "
                             f"action-token trunk, LSTM head); {root} holds a {family} policy. Measure its parts with "
                             f"`runtime --bundle {root} --benchmark` instead")
    dims = manifest_dims(manifest, root)
    graph = None
    if count_graphs:
        parts = manifest.get("parts", {})
        graph = {name: count_onnx_file(root / str(parts[name]["onnx"])).flops for name in PART_NAMES
                 if name in parts}
        if set(graph) != set(PART_NAMES):
            raise MobileVLAError(f"{root / MANIFEST_NAME} does not list all of {', '.join(PART_NAMES)}; rebuild it")
    return make_plan(dims, workspace_mb, quantize_projection, graph, origin=origin or f"the manifest of {root}")


def build_report_plan(stage: Path) -> dict[str, Any]:
    """The plan a build writes into build_report.json: from the staged manifest, without reading a graph."""
    try:
        return plan_dict(bundle_plan(stage, origin="this bundle's manifest"))
    except MobileVLAError as exc:  # a plan that cannot be made must not fail a build that succeeded
        log.warning("no performance plan in the build report: %s", exc)
        return {"error": str(exc)}
