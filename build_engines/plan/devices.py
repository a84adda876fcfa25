"""The Jetson Orin modules the plan predicts for, and the memory constants it assumes (docs/design.md §4).

Every figure cites where it comes from. NVIDIA headlines *sparse* INT8 TOPS (2:4 structured sparsity, which these
graphs do not use) and, for the Orin NX and AGX Orin, the module total with the DLAs: the plan takes the GPU's dense
tensor-core figure, because TensorRT runs these transformer parts on the GPU (the DLA takes convolutional layers, not
attention). Peak figures are at the module's top stock power mode (Nano 15 W, NX 25 W, AGX MAXN), not the
JetPack 6.2 MAXN_SUPER modes.

Per tensor core and clock, Orin's third-generation tensor cores do 1024 dense INT8 operations (512 multiply-adds):
AGX Orin's 170 sparse GPU TOPS over 64 tensor cores at 1.3 GHz, and the Orin Nano 8GB's 20 dense TOPS over 32 at
625 MHz (NVIDIA rounds 20.5 down), both give it. Dense FP16 is half the dense INT8 rate on Ampere tensor cores; the
Jetson data sheets do not print an FP16 tensor figure, so the FP16 peaks below are derived, not quoted.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
INT8_OPS_PER_TENSOR_CORE_CLOCK = 1024  # dense; from the quoted figures above
FP16_OPS_PER_TENSOR_CORE_CLOCK = INT8_OPS_PER_TENSOR_CORE_CLOCK // 2  # Ampere: FP16 at half the INT8 rate (derived)


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    ram_gib: float
    bandwidth_gbs: float  # peak DRAM bandwidth, 10^9 bytes/s, shared by CPU and GPU
    int8_tops: float  # GPU tensor cores, dense INT8, 10^12 ops/s
    fp16_tflops: float  # GPU tensor cores, dense FP16, 10^12 FLOP/s (derived: half the INT8 rate)
    tensor_cores: int
    gpu_mhz: int
    sources: tuple[str, ...]

    def peak_ops(self, precision: str) -> float:
        return (self.int8_tops if precision == "int8" else self.fp16_tflops) * 1e12


ORIN_NANO_8GB = Device(
    key="orin-nano-8gb", name="Orin Nano 8GB", ram_gib=8.0,
    # Data sheet DS-11105-001 v1.1 (NVIDIA Jetson Orin Nano Series): "8GB 128-bit LPDDR5 DRAM ... Maximum Operating
    # Frequency: 2133 MHz" -> 4266 MT/s x 16 bytes = 68.3 GB/s; NVIDIA's module table says 68 GB/s.
    bandwidth_gbs=68.0,
    # Same data sheet: "Jetson Orin Nano 8GB: Up to 40 (Sparse) INT8 TOPs and 20 (Dense) INT8 TOPs". The Orin Nano
    # has no DLA, so all of it is the GPU (1024 CUDA cores, 32 tensor cores, 625 MHz, Table 1).
    int8_tops=20.0,
    fp16_tflops=10.0,  # derived: half the dense INT8 rate; not printed in the data sheet
    tensor_cores=32, gpu_mhz=625,
    sources=("NVIDIA Jetson Orin Nano Series data sheet DS-11105-001 v1.1: 20 dense INT8 TOPS (GPU only), "
             "128-bit LPDDR5 at 2133 MHz (68 GB/s)",),
)

ORIN_NX_16GB = Device(
    key="orin-nx-16gb", name="Orin NX 16GB", ram_gib=16.0,
    # Data sheet DS-10712-001 v1.5 (NVIDIA Jetson Orin NX Series Modules) §2.4: "16GB 128-bit LPDDR5 ... Maximum
    # operating frequency: 3200 MHz" -> 6400 MT/s x 16 bytes = 102.4 GB/s.
    bandwidth_gbs=102.4,
    # Same data sheet, §2: "up to 100 (Sparse) INT8 TOPs and 50 (Dense) INT8 TOPs on the Jetson Orin NX 16GB" is the
    # module with its two DLAs. The GPU alone (Table 2-1: 32 tensor cores, 918 MHz): 32 x 1024 x 918 MHz = 30.1 dense
    # INT8 TOPS (derived; the remaining 20 are the DLAs').
    int8_tops=30.1,
    fp16_tflops=15.0,  # derived: half the dense INT8 rate
    tensor_cores=32, gpu_mhz=918,
    sources=("NVIDIA Jetson Orin NX Series Modules data sheet DS-10712-001 v1.5: 50 dense INT8 TOPS for the module "
             "(GPU + 2 DLAs), GPU 32 tensor cores at 918 MHz (GPU share derived), 128-bit LPDDR5 at 3200 MHz "
             "(102.4 GB/s)",),
)

AGX_ORIN_64GB = Device(
    key="agx-orin-64gb", name="AGX Orin 64GB", ram_gib=64.0,
    # NVIDIA Jetson AGX Orin Series Technical Brief v1.2 and NVIDIA's Jetson module comparison table:
    # "64GB 256-bit LPDDR5 204.8GB/s".
    bandwidth_gbs=204.8,
    # Technical brief: the GPU's 64 tensor cores give "170 Sparse INT8 TOPs" at 1.3 GHz (275 TOPS is the module with
    # its two DLAs, 105 sparse TOPS): 170 / 2 = 85 dense.
    int8_tops=85.0,
    fp16_tflops=42.5,  # derived: half the dense INT8 rate
    tensor_cores=64, gpu_mhz=1300,
    sources=("NVIDIA Jetson AGX Orin Series Technical Brief v1.2: GPU 170 sparse INT8 TOPS (64 tensor cores, "
             "1.3 GHz; halved for dense), 256-bit LPDDR5 204.8 GB/s",),
)

DEVICES = (ORIN_NANO_8GB, ORIN_NX_16GB, AGX_ORIN_64GB)

# Memory the plan counts besides the engines: estimates, no Jetson was at hand (docs/performance-plan.md).
# RAM Linux never gets: an Orin NX 16GB reports 15536 MiB of device memory to CUDA (trtexec log, TensorRT 10.16,
# OE4T/meta-tegra pull request 2243): 0.83 GiB of firmware carve-outs. Assumed the same on the other modules.
CARVEOUT_GIB = 0.83
# Ubuntu's desktop session on a Jetson: ~1.5 GB; logged in over ssh only, 0.3-0.5 GB (microsoft/onnxruntime issue
# 4259, a Jetson Nano). The plan checks against the desktop JetPack; a headless one frees the difference.
OS_DESKTOP_GIB = 1.5
OS_HEADLESS_GIB = 0.5
# The runtime's Python process on the demo bundle: peak RSS 89 MB (`runtime --benchmark --frames 200 --source
# synthetic`, ONNX Runtime on the CPU, measured here 2026-12).
RUNTIME_PYTHON_GIB = 89 / 1024
# CUDA context + TensorRT and its libraries at engine load on a Jetson: Init CUDA +229 MiB, cuBLAS/cuBLASLt +159 CPU
# +182 GPU, cuDNN +240 CPU +241 GPU (TensorRT 8.4 log on a Jetson, NVIDIA/TensorRT issue 2217) = 1.03 GiB on
# shared memory. TensorRT 10 loads cuBLAS/cuDNN only where a tactic uses them, so this is an upper figure.
CUDA_TENSORRT_RUNTIME_GIB = 1.03
# The builder: "Init builder kernel library: CPU +1227, GPU +1235 (MiB)" (trtexec, TensorRT 10, OE4T/meta-tegra
# issue 2120) is 2.4 GiB where CPU and GPU share RAM, plus the CUDA context and build_engines' Python (~0.1 GiB).
BUILDER_GIB = 2.5
