"""A part's CPU INT8 form and its build-time speed measurement, as the bundle records them (docs/design.md §4).

ONNX Runtime on the CPU gets no integer kernels out of the TensorRT Q/DQ graphs: it dequantizes the weights every
run and computes in FP32, slower than the FP32 graph. The CPU INT8 form (`<part>.cpu-int8.onnx`) is another graph
of the same part, dynamically quantized (int8 weights per output channel, activations quantized to uint8 at run
time), which ONNX Runtime runs as integer kernels (`DynamicQuantizeMatMul`, `MatMulIntegerToFloat`,
`DynamicQuantizeLSTM`; VNNI or dot-product instructions where the CPU has them). The build gates it like the Q/DQ
graph and times it against FP32 (`CpuSpeed`); ONNX Runtime's `--precision auto` runs it only where that measurement
says it is faster (runtime/backends/onnx_forms.py).
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Below this the CPU INT8 form does not count as faster: medians on a CPU shared with capture and the control loop
# move by a few percent from run to run, and a part that gains nothing gives up accuracy for nothing.
MIN_CPU_SPEEDUP = 1.05
# The CPU features ONNX Runtime's integer GEMMs are fast with (x86 VNNI/AMX, Arm dot product / i8mm).
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
CPU_INT8_SUFFIX = ".cpu-int8.onnx"
WEIGHT_TYPES = ("int8", "uint8")  # of a CPU INT8 form's quantized weights
# x86 CPUs without these run ONNX Runtime's u8×s8 GEMM with VPMADDUBSW, which adds each pair of uint8×int8 products
# in int16 with saturation: with 8-bit weights large sums clip. Measured on the demo, CPU INT8 end to end: chunk[0]
# MAE 0.035 (gate 0.02) on an AVX2-only EPYC, 0.0024 with AVX-512 VNNI. uint8 weights run u8×u8 kernels, which
# widen to int16 before multiplying and never clip: their integers are the same on every CPU (measured on the demo:
# MAE 0.0018 with all three parts). 7-bit int8 weights (`reduce_range`) cannot clip either, but lost too much on the
# demo's trunk (the end-to-end gate dropped it).
NO_SATURATION_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class CpuHost:
    """The CPU a measurement was taken on: it holds for that CPU, not necessarily for the robot's."""

    model: str
    int8_flags: tuple[str, ...]  # which of INT8_CPU_FLAGS it has
    cpus: int  # logical CPUs this process may use
    machine: str = ""  # platform.machine(); "" in bundles written before it was recorded

    @property
    def saturates_int8(self) -> bool:
        """ONNX Runtime's u8×s8 kernels clip int8 weights' sums on this CPU (NO_SATURATION_FLAGS)."""
        return self.machine.lower() in X86_MACHINES and not set(self.int8_flags) & set(NO_SATURATION_FLAGS)

    def describe(self) -> str:
        flags = ", ".join(self.int8_flags) or "no integer dot-product instructions"
        return f"{self.model} ({self.cpus} CPUs; {flags})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "int8_flags": list(self.int8_flags), "cpus": self.cpus, "machine": self.machine}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CpuHost:
        return cls(str(data["model"]), tuple(str(f) for f in data["int8_flags"]), int(data["cpus"]),
                   str(data.get("machine", "")))


def cpu_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuHost:
    """This machine's CPU model (x86 `model name`, else Arm's `Hardware`/`CPU part`, else the architecture)."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux, or /proc not mounted: the model stays the architecture's name
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif value:
            fields.setdefault(key, value)
    model = fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine()
    if "model name" not in fields and "cpu part" in fields:
        model = f"{model} (CPU part {fields['cpu part']})"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuHost(model, tuple(f for f in INT8_CPU_FLAGS if f in flags), cpus, platform.machine())


@dataclass(frozen=True)
class CpuSpeed:
    """Median latency of one part on ONNX Runtime's CPU provider, FP32 graph vs CPU INT8 form, timed in
    interleaved runs with the same thread count, at build time."""

    fp32_ms: float
    int8_ms: float
    runs: int  # timed runs of each graph
    threads: int  # intra-op threads of both sessions; 0: ONNX Runtime's default (one per physical core)
    host: CpuHost
    measured: str  # ISO 8601 date and time

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fp32_ms) and math.isfinite(self.int8_ms) and self.fp32_ms > 0
                and self.int8_ms > 0 and self.runs > 0 and self.threads >= 0):
            raise ValueError(f"CPU speed measurement out of range: {self}")

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    @property
    def faster(self) -> bool:
        return self.speedup >= MIN_CPU_SPEEDUP

    def describe(self) -> str:
        threads = "ONNX Runtime's default threads" if self.threads == 0 else f"{self.threads} threads"
        return (f"{self.int8_ms:.1f} ms vs FP32 {self.fp32_ms:.1f} ms = {self.speedup:.2f}x, median of {self.runs} "
                f"runs, {threads}, {self.host.describe()}, {self.measured}")

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3),
                "speedup": round(self.speedup, 3), "runs": self.runs, "threads": self.threads,
                "host": self.host.to_dict(), "measured": self.measured}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CpuSpeed:
        return cls(float(data["fp32_ms"]), float(data["int8_ms"]), int(data["runs"]), int(data["threads"]),
                   CpuHost.from_dict(data["host"]), str(data["measured"]))


@dataclass(frozen=True)
class CpuInt8Form:
    """A part's CPU INT8 graph (passed the accuracy gate at build time) and its speed against FP32."""

    onnx: str
    external_data: str | None = None
    speed: CpuSpeed | None = None
    weight_type: str = "int8"  # "uint8": exact on every CPU; "int8": faster with VNNI, clips without (above)

    def __post_init__(self) -> None:
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"CPU INT8 weight type {self.weight_type!r}: expected int8 or uint8")

    def files(self) -> list[str]:
        return [name for name in (self.onnx, self.external_data) if name is not None]

    def clips_on(self, host: CpuHost) -> bool:
        """Its int8 weights meet a CPU whose kernels clip them: the build's accuracy gate does not hold there."""
        return self.weight_type == "int8" and host.saturates_int8

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "external_data": self.external_data,
                "speed": self.speed.to_dict() if self.speed else None, "weight_type": self.weight_type}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CpuInt8Form:
        speed = data.get("speed")
        external = data.get("external_data")
        return cls(str(data["onnx"]), None if external is None else str(external),
                   None if speed is None else CpuSpeed.from_dict(speed), str(data.get("weight_type", "int8")))
