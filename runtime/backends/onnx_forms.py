"""Which graph each part runs on ONNX Runtime (`onnx_choice`, docs/design.md §4), one of three:
- `fp32`: the FP32 graph;
- `cpu-int8`: the part's CPU INT8 form (integer kernels, runtime/cpu_int8.py), when the bundle has one: it passed
  the same accuracy gate as the TensorRT INT8 graph, and the build timed it against FP32 on its CPU;
- `qdq-int8`: the TensorRT Q/DQ graph, which ONNX Runtime runs slower than FP32 (it dequantizes the weights every
  run).

`--precision auto` decides per part: the CPU INT8 form where the bundle's measurement says it is faster than FP32
(at least MIN_CPU_SPEEDUP), FP32 elsewhere, never the Q/DQ graph; FP32 too, with a warning, where a form with
int8 weights meets a CPU whose integer kernels clip them (x86 without VNNI, runtime/cpu_int8.py). A bundle built
before CPU INT8 forms runs FP32.
`--precision int8` runs the CPU INT8 form where the bundle has one, else the Q/DQ graph of a part that passed its
gate (with a warning that it is slower), else FP32 (the part failed its INT8 gate at build time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.backends.base import PolicyBackend
from runtime.backends.onnxruntime import onnx_backend_from, require_cpu_graphs
from runtime.bundle import Bundle, PartEntry
from runtime.cpu_int8 import MIN_CPU_SPEEDUP, CpuHost, CpuInt8Form, CpuSpeed, cpu_host
from runtime.errors import MobileVLAError

log = logging.getLogger("runtime")
ONNX_FORMS = ("fp32", "cpu-int8", "qdq-int8")
REBUILD_FOR_CPU_INT8 = "rebuild the bundle with `build_engines --int8` to get CPU INT8 forms"


@dataclass(frozen=True)
class PartChoice:
    """The graph one part runs on ONNX Runtime, why, and what the user should know about it (logged as a warning)."""

    form: str  # one of ONNX_FORMS
    reason: str
    warning: str | None = None


@dataclass(frozen=True)
class OnnxChoice:
    wanted: str  # --precision: auto | fp32 | int8
    parts: dict[str, PartChoice]

    @property
    def precision(self) -> str:
        """`int8` when any part runs an INT8 graph, else `fp32`."""
        return "fp32" if all(c.form == "fp32" for c in self.parts.values()) else "int8"

    @property
    def label(self) -> str:
        """For the backend's name in logs and benchmark reports, e.g. `auto: vision cpu-int8, trunk cpu-int8,
        head fp32`."""
        forms = {c.form for c in self.parts.values()}
        if len(forms) == 1:
            return f"{self.wanted}: {forms.pop()}" if self.wanted != "fp32" else "fp32"
        return f"{self.wanted}: " + ", ".join(f"{name} {c.form}" for name, c in self.parts.items())

    def paths(self, bundle: Bundle) -> dict[str, Path]:
        return {name: part_file(bundle, name, choice.form) for name, choice in self.parts.items()}


def part_file(bundle: Bundle, name: str, form: str) -> Path:
    entry = bundle.manifest.parts[name]
    if form == "cpu-int8":
        if entry.cpu_int8 is None:
            raise RuntimeError(f"bug: {name} has no CPU INT8 form to run")
        return bundle.path(entry.cpu_int8.onnx)
    return bundle.part_path(name, "int8" if form == "qdq-int8" else "fp32")


def check_cpu_forms(bundle: Bundle, choice: OnnxChoice) -> None:
    """load_bundle has checked every listed file; the directory may have changed since."""
    for name, part in choice.parts.items():
        path = part_file(bundle, name, part.form)
        if part.form == "cpu-int8" and not path.is_file():
            raise MobileVLAError(
                f"bundle {bundle.root}: {name}'s CPU INT8 form {path.name} is missing (the manifest lists it). Copy "
                f"the whole bundle directory again or rebuild it with `build_engines --int8`; --precision fp32 runs "
                f"without it"
            )


def measurement_notes(speed: CpuSpeed, host: CpuHost, threads: int) -> str | None:
    """Where this run differs from the build's measurement (another CPU, other threads): logged, not acted on."""
    notes = []
    if (speed.host.model, speed.host.int8_flags) != (host.model, host.int8_flags):
        notes.append(f"it was measured on {speed.host.describe()}, this is {host.describe()}")
    if speed.threads != threads:
        notes.append(f"it was measured with threads={speed.threads}, this run has threads={threads}")
    return "; ".join(notes) + ": the measured speedup may not hold here" if notes else None


def auto_part(name: str, entry: PartEntry, host: CpuHost, threads: int) -> PartChoice:
    form = entry.cpu_int8
    if form is None:
        if entry.precision == "int8" and entry.int8_onnx:
            return PartChoice("fp32", f"the bundle has no CPU INT8 form, only the TensorRT Q/DQ graph, which ONNX "
                                      f"Runtime runs slower than FP32 ({REBUILD_FOR_CPU_INT8})")
        return PartChoice("fp32", "the bundle has no CPU INT8 form (built without --int8, before CPU INT8 forms, or "
                                  "the form failed its accuracy gate: see the bundle's warnings)")
    if form.clips_on(host):
        reason = clipping_reason(form, host)
        return PartChoice("fp32", reason, f"{name}: --precision auto runs FP32: {reason}")
    if form.speed is None:
        return PartChoice("fp32", f"the bundle records no speed measurement for {form.onnx}")
    if not form.speed.faster:
        return PartChoice("fp32", f"its CPU INT8 form is not faster than FP32 by the bundle's measurement: "
                                  f"{form.speed.describe()} (needs {MIN_CPU_SPEEDUP:g}x)")
    return PartChoice("cpu-int8", f"its CPU INT8 form is faster by the bundle's measurement: {form.speed.describe()}",
                      measurement_notes(form.speed, host, threads))


def clipping_reason(form: CpuInt8Form, host: CpuHost) -> str:
    return (f"{form.onnx} has int8 weights and this CPU ({host.describe()}) has no VNNI, so ONNX "
            f"Runtime's integer kernels clip sums here and the build's accuracy gate does not hold (runtime/"
            f"cpu_int8.py); rebuild the bundle with `build_engines --int8` on a CPU like this one (it then writes "
            f"uint8 weights, exact on every CPU), or run --precision fp32")


def int8_part(name: str, entry: PartEntry, host: CpuHost) -> PartChoice:
    form = entry.cpu_int8
    if form is not None and form.clips_on(host):
        return PartChoice("cpu-int8", f"--precision int8: its CPU INT8 form ({form.onnx})",
                          f"{name}: --precision int8 runs its CPU INT8 form although "
                          f"{clipping_reason(form, host)}")
    if form is not None:
        if form.speed is not None and not form.speed.faster:
            return PartChoice("cpu-int8", f"--precision int8: its CPU INT8 form ({form.speed.describe()})",
                              f"{name}: --precision int8 runs its CPU INT8 form, which the bundle measured no faster "
                              f"than FP32 ({form.speed.speedup:.2f}x); --precision auto would run FP32")
        measured = form.speed.describe() if form.speed else "no speed measurement recorded"
        return PartChoice("cpu-int8", f"--precision int8: its CPU INT8 form ({measured})")
    if entry.precision == "int8" and entry.int8_onnx:
        return PartChoice("qdq-int8", "--precision int8: no CPU INT8 form, so the TensorRT Q/DQ graph",
                          f"{name}: ONNX Runtime runs the TensorRT Q/DQ graph {entry.int8_onnx}, slower than FP32 on "
                          f"the CPU (it dequantizes the weights every run); {REBUILD_FOR_CPU_INT8}, or use --precision "
                          f"auto")
    return PartChoice("fp32", "--precision int8: no INT8 graph of this part passed its accuracy gate (see the "
                              "bundle's warnings)")


def onnx_choice(wanted: str, bundle: Bundle, threads: int = 0) -> OnnxChoice:
    """The graph each part runs on ONNX Runtime for `--precision wanted` (module docstring); nothing is logged."""
    require_cpu_graphs(bundle)
    parts = bundle.manifest.parts
    if wanted == "fp16":
        raise MobileVLAError("--precision fp16 runs on TensorRT only; ONNX Runtime runs fp32 or int8 (use "
                             "--backend tensorrt on a Jetson, or --precision fp32/int8)")
    if wanted == "fp32":
        return OnnxChoice(wanted, {name: PartChoice("fp32", "--precision fp32") for name in parts})
    if wanted == "int8":
        if not any(e.cpu_int8 is not None or e.precision == "int8" for e in parts.values()):
            raise MobileVLAError(f"bundle {bundle.root} has no INT8 parts; build it with `build_engines --int8`, or "
                                 f"use --precision fp32")
        host = cpu_host()
        return OnnxChoice(wanted, {name: int8_part(name, entry, host) for name, entry in parts.items()})
    if wanted == "auto":
        host = cpu_host()
        return OnnxChoice(wanted, {name: auto_part(name, entry, host, threads) for name, entry in parts.items()})
    raise MobileVLAError(f"--precision {wanted!r}: ONNX Runtime runs auto, fp32 or int8")


def onnx_precision(wanted: str, bundle: Bundle) -> str:
    """`fp32` or `int8`: what `--precision wanted` amounts to on ONNX Runtime (for scoring runs and their labels)."""
    return onnx_choice(wanted, bundle).precision


def log_choice(choice: OnnxChoice) -> None:
    for name, part in choice.parts.items():
        log.info("onnxruntime %s: %s (%s)", name, part.form, part.reason)
        if part.warning:
            log.warning("%s", part.warning)


def open_onnx_backend(wanted: str, bundle: Bundle, threads: int = 0) -> PolicyBackend:
    """ONNX Runtime with each part's graph chosen for `--precision wanted`; the choice is logged per part."""
    choice = onnx_choice(wanted, bundle, threads)
    log_choice(choice)
    backend = onnx_backend_from(bundle, choice.paths(bundle), choice.label, threads)
    check_cpu_forms(bundle, choice)
    return backend
