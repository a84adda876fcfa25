"""The build's reports in the bundle: `build_report.json` / `.md`, and the INT8 `accuracy_report.json` / `.md`."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from build_engines.device_graphs import device_markdown
from build_engines.int8 import Int8Result
from build_engines.parity import ParityReport
from build_engines.plan.command import build_report_plan
from build_engines.plan.report import plan_markdown
from runtime.bundle import PartEntry

log = logging.getLogger("build_engines.reports")


def file_size(stage: Path, *names: str | None) -> int:
    return sum((stage / name).stat().st_size for name in names if name)


def build_report(layout: str, instruction: str, source: dict[str, Any], parity: ParityReport,
                 timings: dict[str, float], stage: Path, parts: dict[str, PartEntry]) -> dict[str, Any]:
    sizes = {}
    for name, entry in parts.items():
        sizes[name] = file_size(stage, entry.onnx, entry.external_data)
        if entry.int8_onnx:
            sizes[f"{name}.int8"] = file_size(stage, entry.int8_onnx, entry.int8_external_data)
    return {
        "source": source,
        "layout": layout,
        "parity": parity.to_dict(),
        "timings": timings,
        "sizes_bytes": sizes,
        "host": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                 "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},  # kernels this build ran
        "instruction": instruction,
        "plan": build_report_plan(stage),  # `build_engines --plan`, from the staged manifest
    }


def report_markdown(report: dict[str, Any]) -> str:
    parity = report["parity"]
    lines = [
        "# Build report",
        "",
        f"- source: {report['source']['checkpoint']}",
        f"- policy family: {parity.get('family', 'robovlms-lstm')}",
        f"- layout: {report['layout']} (a bundle setting: it cannot be read from the checkpoint)",
        f"- head variant: {parity['head_variant']}",
        f"- parity: {'PASSED' if parity['passed'] else 'FAILED'} over {parity['frames']} frames (FP32, ONNX Runtime "
        f"vs PyTorch reference)",
        "",
        "| part | max abs err | mean abs err | min cosine | tolerance | ok |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in parity["parts"].items():
        lines.append(f"| {name} | {p['max_abs_err']:.3g} | {p['mean_abs_err']:.3g} | {p['min_cosine']:.8f} | "
                     f"{p['tolerance']:g} | {'yes' if p['passed'] else 'NO'} |")
    lines += ["", "| part | size |", "|---|---|"]
    lines += [f"| {name} | {size / 1e6:.2f} MB |" for name, size in report["sizes_bytes"].items()]
    lines += ["", "Timings: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()), ""]
    if "device_graphs" in report:  # a build without episodes; with --int8 they are in the accuracy report
        lines += device_markdown(report["device_graphs"])
    if "plan" in report:
        lines += plan_markdown(report["plan"])
    if "camera_skew" in report:  # the capture's resize vs training's (runtime/skew.py), when episodes were given
        from runtime.skew_report import skew_markdown

        lines += [skew_markdown(report["camera_skew"]), ""]
    return "\n".join(lines)


def write_reports(stage: Path, report: dict[str, Any], int8: Int8Result | None) -> dict[str, str]:
    (stage / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (stage / "build_report.md").write_text(report_markdown(report))
    reports = {"build": "build_report.json", "build_readable": "build_report.md"}
    if int8 is not None:
        (stage / "accuracy_report.json").write_text(json.dumps(int8.report, indent=2) + "\n")
        (stage / "accuracy_report.md").write_text(accuracy_markdown(int8.report))
        reports.update({"accuracy": "accuracy_report.json", "accuracy_readable": "accuracy_report.md"})
    return reports


def accuracy_markdown(report: dict[str, Any]) -> str:
    """The accuracy report as a readable page (accuracy_report.md in the bundle)."""
    gate, data = report["gate"], report["dataset"]
    limits = gate["thresholds"]
    e2e = gate["end_to_end"]
    lines = [
        "# INT8 accuracy report",
        "",
        f"- calibration data: {data['path']} ({data['episodes']} episodes, {data['frames']} frames, "
        f"{len(data['skipped'])} skipped; scenarios {', '.join(data['scenarios'])})",
        f"- split: {len(data['calibration_pool'])} calibration episodes, {len(data['held_out'])} held out (never "
        f"calibrated on); {report['sample']['calibration_frames']} calibration frames "
        f"{report['sample']['per_scenario']}",
        f"- quantization: {report['quantization']['tool']}, {report['quantization']['method']} ranges, "
        f"symmetric INT8, per-channel weights, Q/DQ on {', '.join(report['quantization']['op_types'])} inputs",
        f"- calibration + gate time: {report['seconds']} s",
        "",
        "| part | precision | cosine mean | cosine min | held-out samples | gate (≥ {}) |".format(limits["cosine"]),
        "|---|---|---|---|---|---|",
    ]
    for name, part in gate["parts"].items():
        lines.append(f"| {name} | {report['precision'][name]} | {part['cosine_mean']:.5f} | {part['cosine_min']:.5f} "
                     f"| {part['samples']} | {'pass' if part['passed'] else 'FAIL'} |")
    lines += [
        "",
        f"End to end over {e2e['episodes']} held-out episodes ({e2e['frames']} frames), chunk[0] INT8 vs FP32, "
        f"INT8 parts {', '.join(e2e['int8_parts']) or 'none'}:",
        "",
        "| metric | value | limit | ok |",
        "|---|---|---|---|",
        f"| MAE | {e2e['mae']:.5f} | ≤ {limits['mae']} | {'yes' if e2e['mae'] <= limits['mae'] else 'NO'} |",
        f"| max abs err | {e2e['max_abs_err']:.5f} | | |",
        f"| sign agreement (dead band ±{limits['dead_band']}) | {e2e['sign_agreement']:.2%} | ≥ "
        f"{limits['sign_agreement']:.0%} | {'yes' if e2e['sign_agreement'] >= limits['sign_agreement'] else 'NO'} |",
        "",
    ]
    if "device_graphs" in report:
        lines += device_markdown(report["device_graphs"])
    if report["warnings"]:
        lines += ["Warnings:", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def append_markdown(path: Path, report: Mapping[str, Any]) -> None:
    """Add the CPU INT8 section to the accuracy report's readable page."""
    with path.open("a") as handle:
        handle.write("\n" + cpu_int8_markdown(report))


def cpu_int8_markdown(report: Mapping[str, Any]) -> str:
    """The `cpu_int8` block as a section of accuracy_report.md."""
    host = report["host"]
    lines = [
        "## CPU INT8 (ONNX Runtime)",
        "",
        f"- form: {report['tool']}, {report['weight_type']} weights "
        f"{'per channel' if report['settings']['per_channel'] else 'per tensor'}, uint8 activations at run time, on "
        f"{', '.join(report['settings']['op_types'])}",
        f"- timed on {host['model']} ({host['cpus']} CPUs; {', '.join(host['int8_flags']) or 'no VNNI/dot product'}), "
        f"ONNX Runtime's default threads; --precision auto runs a part's CPU INT8 form when it is at least "
        f"{report['min_speedup']}x faster",
        "",
        "| part | integer kernels | cosine mean | gate | FP32 ms | CPU INT8 ms | speedup | auto runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, part in report["parts"].items():
        kernels = sum(part["integer_kernels"].values())
        speed = part["speed"]
        lines.append(f"| {name} | {kernels} | {part['gate']['cosine_mean']:.5f} | "
                     f"{'pass' if part['gate']['passed'] else 'FAIL'} | {speed['fp32_ms']:.2f} | "
                     f"{speed['int8_ms']:.2f} | {speed['speedup']:.2f}x | {'cpu-int8' if part['auto'] else 'fp32'} |")
    policy = report["policy_ms"]
    lines += ["", f"Policy (sum of the parts' medians): FP32 {policy['fp32']} ms, auto {policy['auto']} ms "
                  f"({policy['auto_speedup']}x), int8 {policy['int8']} ms ({policy['int8_speedup']}x).", ""]
    for label, e2e in report["end_to_end"].items():
        lines.append(f"End to end ({label}: CPU INT8 {', '.join(e2e['int8_parts']) or 'none'}) over {e2e['episodes']} "
                     f"held-out episodes: chunk[0] MAE {e2e['mae']:.5f}, max {e2e['max_abs_err']:.5f}, sign agreement "
                     f"{e2e['sign_agreement']:.2%}: {'passed' if e2e['passed'] else 'FAILED'}")
    for title, items in (("Warnings", report["warnings"]), ("Notes", report["notes"])):
        if items:
            lines += ["", f"{title}:", ""] + [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"
