"""TensorRT engine builds for a bundle (docs/design.md §4): one engine per part and precision, one part at a time.

Imports no torch/transformers/onnx: on the Jetson, `build_engines --engines-only --bundle DIR` needs only TensorRT
and pycuda. TensorRT is imported lazily; where it is missing, the caller says what to run on the device.

- FP16: the FP16-typed graph (`NAME.fp16.onnx`, build_engines/fp16.py) as a strongly typed network: every layer in
  the type the graph gives it, FP32 only where the graph keeps it on purpose. A bundle without it (built before, or
  a part whose FP16 graph failed its gate) builds from the FP32 ONNX with the FP16 builder flag.
- INT8: the FP16-typed Q/DQ graph (`NAME.int8.fp16.onnx`) as a strongly typed network: INT8 where the Q/DQ are,
  FP16 elsewhere (no FP32 islands); without it, the FP32 Q/DQ graph. On TensorRT 8.6 (no strong typing): explicit
  Q/DQ with the INT8 and FP16 flags. Only parts whose precision is int8 (they passed the gate) get an INT8 engine.
- `parse_from_file`, so external weight files resolve beside the ONNX, not against the working directory.
- Workspace pool capped at a share of the memory available now (on a Jetson GPU and CPU share RAM).
- The timing cache lives in the bundle (`engines/timing.cache`) and is reused by the next build.
- The builder's log is captured into `engine_build_report.json`; the manifest records, per engine, the TensorRT
  version, device name, compute capability, precision, size and sha256.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.backends.cuda import DeviceInfo, cuda_device, device_command, import_tensorrt
from runtime.bundle import Bundle, PartEntry, load_bundle, sha256_file
from runtime.bundle_write import write_manifest
from runtime.errors import MobileVLAError, check_range

if TYPE_CHECKING:  # type-checked against tensorrt-stubs (make lint installs them); imported lazily at run time
    import tensorrt as trt

log = logging.getLogger("build_engines.tensorrt")

ENGINE_DIR = "engines"
TIMING_CACHE = f"{ENGINE_DIR}/timing.cache"
ENGINE_REPORT = "engine_build_report.json"
WORKSPACE_SHARE = 0.5  # of MemAvailable: the builder also holds the weights and tactics' scratch outside the pool
MIN_WORKSPACE = 256 << 20
MAX_WORKSPACE_MB = 1 << 20  # 1 TiB: more than any device this builds on


def memory_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (on a Jetson: what both CPU and GPU can still get)."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise MobileVLAError("/proc/meminfo has no MemAvailable line; pass --workspace-mb explicitly")


def check_workspace_mb(requested_mb: int) -> None:
    check_range("--workspace-mb", requested_mb, 1, MAX_WORKSPACE_MB,
                fix="it is the TensorRT workspace pool in MB; leave it out for 50% of the available memory")


def workspace_limit(requested_mb: int | None, available: int) -> int:
    """The builder's workspace pool: `requested_mb`, capped at a share of the available memory."""
    cap = max(MIN_WORKSPACE, int(available * WORKSPACE_SHARE))
    if requested_mb is None:
        return cap
    requested = requested_mb << 20
    if requested > cap:
        log.warning("--workspace-mb %d exceeds %d%% of available memory (%d MB); using %d MB", requested_mb,
                    int(WORKSPACE_SHARE * 100), available >> 20, cap >> 20)
    return min(requested, cap)


def make_logger(lines: list[str]) -> trt.ILogger:
    """A TensorRT logger that keeps every message (for the report) and forwards warnings and errors."""
    import tensorrt as trt

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            lines.append(f"{severity.name}: {msg}")
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)

    return CapturingLogger()


def strongly_typed_flag() -> int | None:
    """The strongly typed network flag (TensorRT >= 9), or None on 8.x."""
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return None if flag is None else 1 << int(flag)


def typed_graph(entry: PartEntry, precision: str) -> bool:
    """Whether the part's `precision` graph carries the device's types, so it is built as a strongly typed network:
    every Q/DQ graph, and the FP16-typed graph where the bundle has one."""
    return precision == "int8" or entry.fp16_onnx is not None


def build_engine(onnx_path: Path, engine_path: Path, precision: str, workspace: int, cache_path: Path,
                 lines: list[str], typed: bool) -> float:
    """Parse `onnx_path`, build one engine, write it and the updated timing cache; returns seconds taken.

    `typed`: the graph carries the device's types (FP16-typed, or Q/DQ): a strongly typed network runs it as written.
    """
    import tensorrt as trt

    started = time.perf_counter()
    logger = make_logger(lines)
    builder = trt.Builder(logger)
    strongly = strongly_typed_flag() if typed else None
    network = builder.create_network(strongly or 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MobileVLAError(
            f"TensorRT cannot parse {onnx_path} ({errors}); the bundle was built by a newer exporter than this "
            f"TensorRT supports, or the file is damaged: rebuild the bundle, or upgrade JetPack"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if strongly is None:  # weakly typed: the FP32 graph with the FP16 flag; TensorRT 8.6: explicit Q/DQ
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        tail = " | ".join(lines[-5:])
        raise MobileVLAError(
            f"TensorRT failed to build the {precision} engine for {onnx_path.name} (last log lines: {tail}). Out of "
            f"memory is the usual cause on a 16 GB Jetson: stop other processes, add swap, or lower --workspace-mb"
        )
    write_atomically(engine_path, memoryview(plan))  # no second host copy of a multi-GB engine
    write_atomically(cache_path, bytes(config.get_timing_cache().serialize()))
    return time.perf_counter() - started


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    with temporary.open("wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def wanted_precisions(entry: PartEntry) -> list[str]:
    return ["fp16", "int8"] if entry.precision == "int8" and entry.int8_onnx else ["fp16"]


def engines_current(entry: PartEntry, tensorrt_version: str, device: DeviceInfo) -> bool:
    """True when the part has every wanted engine for this TensorRT version and GPU (nothing to rebuild)."""
    for precision in wanted_precisions(entry):
        record = entry.engines.get(precision)
        if not record or record.get("tensorrt") != tensorrt_version or record.get("device") != device.name \
                or record.get("compute_capability") != device.compute_capability:
            return False
    return True


def build_bundle_engines(root: Path, workspace_mb: int | None = None, force: bool = False,
                         verify: bool = True) -> dict[str, Any]:
    """Build the missing or stale engines of the bundle at `root` in place; the manifest is rewritten last."""
    trt = import_tensorrt()
    if trt is None:
        raise MobileVLAError(
            "TensorRT is not installed on this machine; engines are built on the device. Copy the bundle there and "
            f"run: {device_command(root)}"
        )
    bundle = load_bundle(root, verify_hashes=verify)
    device = cuda_device()
    version = str(trt.__version__)
    workspace = workspace_limit(workspace_mb, memory_available())
    (root / ENGINE_DIR).mkdir(exist_ok=True)
    cache_path = root / TIMING_CACHE
    report: dict[str, Any] = {"tensorrt": version, "device": device.name,
                              "compute_capability": device.compute_capability, "workspace_bytes": workspace,
                              "engines": {}, "log": []}
    parts = dict(bundle.manifest.parts)
    for name, entry in parts.items():
        if not force and engines_current(entry, version, device):
            log.info("%s: engines for TensorRT %s on %s are current; skipped", name, version, device.name)
            continue
        engines = dict(entry.engines)
        for precision in wanted_precisions(entry):
            engines[precision] = build_one(bundle, name, precision, workspace, cache_path, device, version, report)
        parts[name] = replace(entry, engines=engines)
    files = dict(bundle.manifest.files)
    for entry in parts.values():
        for record in entry.engines.values():
            files[record["file"]] = record["sha256"]
    (root / ENGINE_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    files[ENGINE_REPORT] = sha256_file(root / ENGINE_REPORT)
    if cache_path.is_file():
        files[TIMING_CACHE] = sha256_file(cache_path)
    reports = {**bundle.manifest.reports, "engines": ENGINE_REPORT}
    write_manifest(root, replace(bundle.manifest, parts=parts, files=files, reports=reports))
    return report


def build_one(bundle: Bundle, name: str, precision: str, workspace: int, cache_path: Path,
              device: DeviceInfo, version: str, report: dict[str, Any]) -> dict[str, Any]:
    entry = bundle.manifest.parts[name]
    onnx_name = entry.device_onnx(precision)
    typed = typed_graph(entry, precision)
    relative = f"{ENGINE_DIR}/{name}.{precision}.engine"
    lines: list[str] = []
    log.info("building the %s %s engine from %s (workspace %d MB)", name, precision, onnx_name, workspace >> 20)
    seconds = build_engine(bundle.path(onnx_name), bundle.path(relative), precision, workspace, cache_path, lines,
                           typed)
    record: dict[str, Any] = {"file": relative, "precision": precision, "source": onnx_name, "tensorrt": version,
              "device": device.name, "compute_capability": device.compute_capability,
              "strongly_typed": typed and strongly_typed_flag() is not None,
              "layers": entry.layers.get(precision, {}),
              "size_bytes": bundle.path(relative).stat().st_size, "sha256": sha256_file(bundle.path(relative)),
              "build_s": round(seconds, 1)}
    report["engines"][f"{name}.{precision}"] = record
    report["log"] += [f"[{name}.{precision}] {line}" for line in lines]
    log.info("built %s in %.0f s (%.1f MB)", relative, seconds, record["size_bytes"] / 1e6)
    return record
