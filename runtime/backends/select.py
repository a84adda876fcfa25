"""Which backend runs a bundle here, decided once: TensorRT when asked for or when its engines can run, else ONNX
Runtime; the choice and its reason are logged. The CLI calls `open_backend` and nothing else.

TensorRT runs the bundle's fp16 or int8 engines (`tensorrt_precision`); whether it can is probed once per run
(`runtime/backends/tensorrt/engines.probe`: TensorRT, pycuda, the GPU, the engine records), and the probe's TensorRT
version goes to the backend it opens. On ONNX Runtime each part's graph is chosen by
`runtime/backends/onnx_forms.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runtime.backends.base import PolicyBackend
from runtime.backends.onnx_forms import open_onnx_backend
from runtime.bundle import Bundle
from runtime.config import BACKENDS, RuntimeConfig
from runtime.errors import MobileVLAError

log = logging.getLogger("runtime")


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # tensorrt | onnxruntime
    reason: str  # why, for the log and the benchmark report
    tensorrt_version: str = ""  # what the probe found, when the choice is TensorRT


def tensorrt_precision(wanted: str, bundle: Bundle) -> str:
    if wanted == "fp32":
        raise MobileVLAError("TensorRT engines are fp16 or int8; use --precision fp16/int8/auto, or --backend "
                             "onnxruntime for fp32")
    if wanted == "auto":
        return "int8" if bundle.manifest.has_int8 else "fp16"
    return wanted


def decide(requested: str, bundle: Bundle, precision: str) -> BackendChoice:
    """`--backend auto|tensorrt|onnxruntime`: auto takes TensorRT where it can run this bundle; the choice is logged.

    `precision` is the TensorRT precision (fp16 | int8). `tensorrt` refuses with the reason when it cannot run.
    """
    from runtime.backends.tensorrt.engines import probe

    if requested not in BACKENDS:
        raise MobileVLAError(f"--backend {requested!r} is not one of {BACKENDS}")
    if requested == "onnxruntime":
        choice = BackendChoice("onnxruntime", "asked for with --backend onnxruntime")
    else:
        found = probe(bundle, precision)
        if requested == "tensorrt" and found.reason is not None:
            raise MobileVLAError(f"--backend tensorrt cannot run bundle {bundle.root}: {found.reason}")
        if found.reason is None:
            asked = "--backend tensorrt" if requested == "tensorrt" else "auto"
            choice = BackendChoice("tensorrt", f"{asked}: the bundle's {precision} engines match this TensorRT and "
                                               f"GPU", found.version)
        else:
            choice = BackendChoice("onnxruntime", f"auto: TensorRT unavailable: {found.reason}")
    log.info("backend %s (%s)", choice.backend, choice.reason)
    return choice


def open_backend(config: RuntimeConfig, bundle: Bundle) -> PolicyBackend:
    """The backend `config` asks for, opened (not yet activated): TensorRT when asked for or when auto finds runnable
    engines, else ONNX Runtime with each part's graph chosen. The choice is logged."""
    if config.precision == "fp32" and config.backend != "tensorrt":
        log.info("backend onnxruntime (--precision fp32: TensorRT engines are fp16/int8)")
    else:
        precision = tensorrt_precision(config.precision, bundle)
        choice = decide(config.backend, bundle, precision)
        if choice.backend == "tensorrt":
            from runtime.backends.tensorrt.backend import TensorRTBackend
            from runtime.backends.tensorrt.engines import engine_choices

            # load_bundle has already hashed the engine files when verification is on
            return TensorRTBackend(bundle, precision, engine_choices(bundle, precision), choice.tensorrt_version,
                                   verify=False)
    backend = open_onnx_backend(config.precision, bundle, config.threads)
    log.info("running %s", backend.name)
    return backend
