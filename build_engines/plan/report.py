"""The plan as printed tables (`build_engines --plan`), as JSON (`--json FILE`, the build report's `plan` key) and as
the short table in build_report.md."""

from __future__ import annotations

from typing import Any

from build_engines.plan import Plan
from build_engines.plan.devices import (
    BUILDER_GIB,
    CARVEOUT_GIB,
    CUDA_TENSORRT_RUNTIME_GIB,
    GIB,
    OS_DESKTOP_GIB,
    RUNTIME_PYTHON_GIB,
)
from build_engines.plan.estimate import (
    BUILD_FORMS,
    ENGINE_PRECISIONS,
    PRECISIONS,
    DevicePlan,
    Fit,
    Floor,
    frame_bound,
    part_bytes,
    steady_bytes,
)
from build_engines.plan.graph import relative_difference

PLAN_VERSION = 1
ASSUMPTIONS = (
    "FLOPs: MatMul/Gemm/Conv/LSTM products only, a multiply-add = 2 FLOPs; norms, softmax and activations are left "
    "out (<1%)",
    "floor = max(FLOPs / dense tensor-core peak, bytes moved / DRAM bandwidth) per part; a frame runs the parts one "
    "after the other; the GPU only (no DLA), stock top power mode (not MAXN_SUPER), peaks no real kernel reaches",
    "bytes moved = weights read once per frame (the trunk reads only the looked-up rows of its 65k-row embedding "
    "table; the engine holds all of it) + the part's inputs and outputs; activations between ops are taken to stay "
    "on chip or be fused (their unfused traffic is listed: it would add to the memory-bound floors)",
    "int8 = INT8 weights (and activation inputs) for MatMul/Gemm, the rest FP16 (a Q/DQ graph with FP32 float parts "
    "runs those in FP32, slower); the image-to-text projection stays float unless --keep-float drops it",
    f"usable RAM = module RAM - {CARVEOUT_GIB} GiB firmware carve-outs - {OS_DESKTOP_GIB} GiB desktop JetPack",
    f"run time = engines (≈ weights) + each context's activations (largest op's inputs + output) + "
    f"{RUNTIME_PYTHON_GIB + CUDA_TENSORRT_RUNTIME_GIB:.2f} GiB runtime process (89 MB measured Python runtime + "
    f"{CUDA_TENSORRT_RUNTIME_GIB} GiB CUDA/TensorRT, from a public Jetson log); start-up reads the largest engine "
    f"once more",
    f"build time (per part, one at a time) = parsed ONNX weights + 2 x engine (built, and its serialized copy) + "
    f"{BUILDER_GIB} GiB builder + the whole workspace pool (default: half the usable RAM, as tensorrt_build caps it)",
)


def bound_letter(floor: Floor) -> str:
    return "M" if floor.bound == "memory" else "C"


def num(value: float) -> str:
    """Two decimals, or three significant digits below 1 (the tiny preset's figures are small)."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.995 else f"{value:.3g}"


def gib(value: int) -> str:
    return num(value / GIB)


def build_cell(part: str, fit: Fit) -> str:
    pool = fit.detail["workspace"]
    return f"{(fit.need_bytes - pool) / GIB:.1f} + {pool / GIB:.1f} {'ok' if fit.fits else 'NO'} ({part})"


def fit_cell(fit: Fit, steady: bool = False) -> str:
    need = f"{steady_bytes(fit) / GIB:.1f} / {fit.need_bytes / GIB:.1f}" if steady else f"{fit.need_bytes / GIB:.1f}"
    return f"{need} {'ok' if fit.fits else 'NO'}"


def header(plan: Plan) -> list[str]:
    d = plan.dims
    variant = "velocities" if len(d.head.outputs) == 1 else "actions + gripper"
    return [
        f"Performance plan: {d.preset} (vision {d.vision.layers}x{d.vision.hidden} over {d.vision.tokens} tokens; "
        f"trunk {d.text.layers}x{d.text.width} over {d.sequence_length} tokens, layout {d.layout}, "
        f"{d.max_prompt_tokens} prompt tokens; head LSTM {d.head.layers}x{d.head.hidden} over {d.head.window} steps, "
        f"{variant})",
        f"Counted from {plan.origin}: no weights are read and nothing is exported"
        + ("; the graph column counts the bundle's ONNX files (shapes only)." if plan.graph_flops else "."),
    ]


def parts_table(plan: Plan) -> list[str]:
    lines = ["| part | GFLOP | on INT8 cores | params (M) | weights fp32 / fp16 / int8 (GiB) | moved per frame fp16 / "
             "int8 (GiB) | activations unfused fp16 (GiB) | activations peak (MiB) |"
             + (" graph GFLOP (diff) |" if plan.graph_flops else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if plan.graph_flops else "")]
    rows = dict(plan.parts)
    for name, part in rows.items():
        b = {p: part_bytes(part, p) for p in PRECISIONS}
        share = part.int8_flops / part.flops if part.flops else 0.0
        row = (f"| {name} | {num(part.flops / 1e9)} | {share:.0%} | {part.parameters / 1e6:.1f} | "
               f"{gib(b['fp32'].weights)} / {gib(b['fp16'].weights)} / {gib(b['int8'].weights)} | "
               f"{gib(b['fp16'].moved)} / {gib(b['int8'].moved)} | {gib(b['fp16'].activations)} | "
               f"{num(b['fp16'].activation_peak / (1 << 20))} |")
        if plan.graph_flops:
            graph = plan.graph_flops[name]
            row += f" {num(graph / 1e9)} ({relative_difference(part.flops, graph):.2%}) |"
        lines.append(row)
    total = sum(p.flops for p in rows.values())
    lines.append(f"| frame | {num(total / 1e9)} | {sum(p.int8_flops for p in rows.values()) / total:.0%} | "
                 f"{sum(p.parameters for p in rows.values()) / 1e6:.1f} | "
                 + " / ".join(gib(sum(part_bytes(p, x).weights for p in rows.values())) for x in PRECISIONS) + " | "
                 + " / ".join(gib(sum(part_bytes(p, x).moved for p in rows.values())) for x in ENGINE_PRECISIONS)
                 + f" | {gib(sum(part_bytes(p, 'fp16').activations for p in rows.values()))} | |"
                 + (" |" if plan.graph_flops else ""))
    return lines


def floors_table(plan: Plan) -> list[str]:
    names = list(plan.parts)
    cols = [f"{n} {p}" for n in names for p in ENGINE_PRECISIONS]
    lines = ["| device | " + " | ".join(cols) + " | frame fp16 | frame int8 |",
             "|---" * (len(cols) + 3) + "|"]
    for dp in plan.devices:
        cells = [f"{num(dp.floors[p][n].ms)} {bound_letter(dp.floors[p][n])}" for n in names
                 for p in ENGINE_PRECISIONS]
        frames = [f"{num(dp.frame_ms(p))} {frame_bound(dp.floors[p])[0].upper()} ({1e3 / dp.frame_ms(p):.0f} FPS)"
                  for p in ENGINE_PRECISIONS]
        lines.append(f"| {dp.device.name} | " + " | ".join(cells + frames) + " |")
    return lines


def memory_table(plan: Plan) -> list[str]:
    lines = ["| device | RAM / usable | run fp16 (steady / start-up) | run int8 (steady / start-up) | build fp16 from "
             "FP32 ONNX | build fp16 from FP16 ONNX | build int8 from Q/DQ ONNX |", "|---|---|---|---|---|---|---|"]
    for dp in plan.devices:
        usable = dp.run["fp16"].usable_bytes
        builds = [build_cell(*dp.build[form]) for form in BUILD_FORMS]
        lines.append(f"| {dp.device.name} | {dp.device.ram_gib:.0f} / {usable / GIB:.1f} | "
                     f"{fit_cell(dp.run['fp16'], True)} | {fit_cell(dp.run['int8'], True)} | " + " | ".join(builds)
                     + " |")
    return lines


def plan_text(plan: Plan) -> str:
    workspace = (f"--workspace-mb {plan.workspace_mb} (capped at half the usable RAM)" if plan.workspace_mb
                 else "the default pool, half the usable RAM")
    lines = [
        *header(plan), "",
        "Per part, per frame:", "", *parts_table(plan), "",
        "Floor latency in ms (C = compute-bound, M = memory-bound): a lower bound, not a prediction of measured "
        "latency:", "", *floors_table(plan), "",
        f"Memory in GiB against the usable RAM. Run: ok/NO for the start-up peak. Build: the part that needs the most, "
        f"as parsed ONNX + engine + builder, plus the workspace pool counted in full ({workspace}):", "",
        *memory_table(plan), "",
    ]
    warnings = [w for dp in plan.devices for w in dp.warnings]
    if warnings:
        lines += ["Warnings:", *(f"- {w}" for w in warnings),
                  "- Building the engines on a larger Jetson and copying them over does not work: an engine is tied "
                  "to its device model and TensorRT version, and the runtime refuses a mismatch.", ""]
    lines += ["Assumptions:", *(f"- {a}" for a in ASSUMPTIONS),
              "Device figures (GPU dense tensor-core peaks; FP16 derived as half the INT8 rate):",
              *(f"- {dp.device.name}: {dp.device.bandwidth_gbs:g} GB/s, {dp.device.int8_tops:g} INT8 TOPS, "
                f"{dp.device.fp16_tflops:g} FP16 TFLOPS, {dp.device.ram_gib:g} GB; {'; '.join(dp.device.sources)}"
                for dp in plan.devices), ""]
    return "\n".join(lines)


def floor_dict(floor: Floor) -> dict[str, Any]:
    return {"ms": round(floor.ms, 4), "bound": floor.bound, "compute_ms": round(floor.compute_ms, 4),
            "memory_ms": round(floor.memory_ms, 4)}


def fit_dict(fit: Fit) -> dict[str, Any]:
    return {"need_bytes": fit.need_bytes, "usable_bytes": fit.usable_bytes, "fits": fit.fits, **fit.detail}


def device_dict(dp: DevicePlan) -> dict[str, Any]:
    d = dp.device
    floors: dict[str, Any] = {}
    for p in ENGINE_PRECISIONS:
        floors[p] = {name: floor_dict(f) for name, f in dp.floors[p].items()}
        floors[p]["frame"] = {"ms": round(dp.frame_ms(p), 4), "bound": frame_bound(dp.floors[p])}
    return {
        "name": d.name, "ram_gib": d.ram_gib, "bandwidth_gbs": d.bandwidth_gbs, "int8_dense_tops": d.int8_tops,
        "fp16_dense_tflops": d.fp16_tflops, "sources": list(d.sources),
        "floor_ms": floors,
        "memory": {"run": {p: fit_dict(f) for p, f in dp.run.items()},
                   "build": {form: {"part": part, **fit_dict(fit)} for form, (part, fit) in dp.build.items()}},
        "warnings": list(dp.warnings),
    }


def plan_dict(plan: Plan) -> dict[str, Any]:
    d = plan.dims
    parts = {}
    for name, part in plan.parts.items():
        entry: dict[str, Any] = {
            "flops": part.flops, "int8_flops": part.int8_flops, "parameters": part.parameters,
            "quantized_weights": part.quantized_weights,
            "bytes": {p: vars(part_bytes(part, p)) | {"moved": part_bytes(part, p).moved} for p in PRECISIONS},
        }
        if plan.graph_flops:
            entry["graph_flops"] = plan.graph_flops[name]
            entry["graph_relative_difference"] = relative_difference(part.flops, plan.graph_flops[name])
        parts[name] = entry
    return {
        "plan_version": PLAN_VERSION,
        "origin": plan.origin,
        "model": {"preset": d.preset, "layout": d.layout, "max_prompt_tokens": d.max_prompt_tokens,
                  "sequence_length": d.sequence_length, "vision": vars(d.vision) | {"tokens": d.vision.tokens},
                  "text": vars(d.text), "latent_queries": d.latent_queries,
                  "head": vars(d.head) | {"outputs": list(d.head.outputs)}},
        "workspace_mb": plan.workspace_mb,
        "projection_int8": plan.projection_int8,
        "assumptions": list(ASSUMPTIONS),
        "parts": parts,
        "devices": {dp.device.key: device_dict(dp) for dp in plan.devices},
    }


def plan_markdown(data: dict[str, Any]) -> list[str]:
    """The build report's short plan table, from the JSON form (what build_report.json holds)."""
    if "error" in data:
        return ["## Performance plan", "", f"Not made: {data['error']}", ""]
    lines = ["## Performance plan (floor, not measured: `build_engines --plan --bundle DIR` for the details)", "",
             "| device | frame floor fp16 | frame floor int8 | run fp16 | run int8 | build fp16 (FP16-typed ONNX) | "
             "build fp16 (FP32 ONNX) |", "|---|---|---|---|---|---|---|"]
    for dev in data["devices"].values():
        floor, memory = dev["floor_ms"], dev["memory"]
        cells = [f"{num(floor[p]['frame']['ms'])} ms ({floor[p]['frame']['bound']})" for p in ENGINE_PRECISIONS]
        fits = [memory["run"]["fp16"], memory["run"]["int8"], memory["build"]["fp16_from_fp16_onnx"],
                memory["build"]["fp16_from_fp32_onnx"]]
        cells += [f"{f['need_bytes'] / GIB:.1f} GiB {'ok' if f['fits'] else 'NO'}" for f in fits]
        lines.append(f"| {dev['name']} | " + " | ".join(cells) + " |")
    return [*lines, ""]
