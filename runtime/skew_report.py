"""The skew report (runtime/skew.py) as text for the terminal (`runtime --score --resize-path pipeline`) and as
Markdown for a build report or the README, with the verdict: the best method, the configured ones, the bound, the
two-stage path's cost, and any channel-order mistake."""

from __future__ import annotations

from typing import Any

COLUMNS = ("path", "frames", "MAE", "max err", "sign", "pixel MAE", "resize ms", "bound")


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a (not finite)" if value is None else f"{value:.{digits}f}"


def _cells(row: dict[str, Any], axes: list[str]) -> list[str]:
    cost = f"{row['resize_ms']:.1f}"
    if row["cpu_step_ms"] is not None:
        cost += f" (CPU step {row['cpu_step_ms']:.1f})"
    cells = [row["path"], str(row["frames"]), _num(row["mae"], 5), _num(row["max_abs_err"]),
             _pct(row["sign_agreement"])]
    for axis in axes:
        a = row["axes"][axis]
        cells.append(f"{a['mae']:.5f} / {a['max_abs_err']:.3f} / {_pct(a['sign_agreement'])}")
    pixel = f"{row['pixel_mae']:.2f}" + (" SWAPPED R/B" if row["channels"] == "swapped" else "")
    return [*cells, pixel, cost, "within" if row["within_bound"] else "OUTSIDE"]


def _header(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    axes = list(report["rows"][0]["axes"])
    names = [*COLUMNS[:5], *(f"{axis} MAE / max / sign" for axis in axes), *COLUMNS[5:]]
    return axes, names


def verdict_lines(report: dict[str, Any]) -> list[str]:
    bound, verdict = report["bound"], report["verdict"]
    lines = [f"bound: chunk[0] MAE <= {bound['mae']:g} and sign agreement >= {bound['sign_agreement']:.0%} against "
             f"the training-resize run (signs within ±{bound['dead_band']:g} count as zero)"]
    best = verdict["best"]
    if best is not None:
        lines.append(f"lowest skew: {best} ({'within' if verdict['best_within_bound'] else 'OUTSIDE'} the bound)")
    for key, within in verdict["configured_within_bound"].items():
        lines.append(f"configured {key} = {report['configured'][key].split(':', 1)[1]}: "
                     f"{'within' if within else 'OUTSIDE'} the bound")
    if best is not None and not verdict["best_within_bound"]:
        lines.append("no pipeline method alone is within the bound: scale in two stages (source.two_stage: true on a "
                     "Jetson: the VIC to 2·S, then videoscale source.resize_method on the CPU)")
    for row in verdict["two_stage"]:
        lines.append(f"two-stage {row['path']}: {'within' if row['within_bound'] else 'OUTSIDE'} the bound, "
                     f"{row['resize_ms']:.1f} ms per frame, of which the CPU step {row['cpu_step_ms']:.1f} ms")
    for path in verdict["channels_swapped"]:
        lines.append(f"CHANNEL ORDER: {path} delivers frames nearer the training frame with R and B swapped: a "
                     f"BGR/RGB mistake (the episodes' order is source.h5_color, --h5-color; the caps must say it)")
    for skipped in report["skipped_episodes"]:
        lines.append(f"skipped episode {skipped['episode']}: {skipped['why']}")
    return lines


def skew_text(report: dict[str, Any]) -> str:
    """The report as a fixed-width table and the verdict (`runtime --score --resize-path pipeline`)."""
    axes, names = _header(report)
    rows = [names, *(_cells(row, axes) for row in report["rows"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(names))]
    lines = [f"chunk[0] skew of each resize path against the training resize ({report['training_resize']}), "
             f"{report['episodes_used']} episodes, {report['frames']} frames of {report['episodes']}, "
             f"{report['precision']} graphs:"]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join([*lines, "", *verdict_lines(report)])


def skew_markdown(report: dict[str, Any], heading: str = "### Train-serve skew of the camera resize") -> str:
    """The report as a Markdown section (a build report, the README)."""
    if "skipped" in report:
        return (f"{heading}\n\nNot measured: {report['skipped']}. Measure it where GStreamer runs: `runtime --source "
                f"h5:{report['episodes']} --score --resize-path pipeline`.\n")
    axes, names = _header(report)
    lines = [heading, "",
             f"chunk[0] of each resize path against the training resize ({report['training_resize']}) on "
             f"{report['episodes_used']} episodes ({report['frames']} frames) of `{report['episodes']}`, "
             f"{report['precision']} graphs. MAE and max error in the policy's output units; sign: sign agreement; "
             f"pixel MAE: mean |difference| of the model's channels, 0-255; resize ms: per frame on this host.", "",
             "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(_cells(row, axes))) + " |"
              for row in report["rows"]]
    return "\n".join([*lines, "", *(f"- {line}" for line in verdict_lines(report))]) + "\n"
