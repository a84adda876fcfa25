"""Which backend and precision run a bundle here: TensorRT when asked for or when its engines can run, else ONNX
Runtime; the choice and its reason are logged."""

from __future__ import annotations

import logging

from runtime.backend import PolicyBackend, onnx_backend
from runtime.bundle import Bundle
from runtime.config import RuntimeConfig
from runtime.errors import MobileVLAError

log = logging.getLogger("runtime")


def onnx_precision(wanted: str, bundle: Bundle) -> str:
    if wanted == "fp16":
        raise MobileVLAError("--precision fp16 runs on TensorRT only; ONNX Runtime runs fp32 or int8 (use "
                             "--backend tensorrt on a Jetson, or --precision fp32/int8)")
    if wanted == "int8" and not bundle.manifest.has_int8:
        raise MobileVLAError(f"bundle {bundle.root} has no INT8 parts; build it with `build_engines --int8`, or use "
                             f"--precision fp32")
    if wanted == "auto":
        return "int8" if bundle.manifest.has_int8 else "fp32"
    return wanted


def tensorrt_precision(wanted: str, bundle: Bundle) -> str:
    if wanted == "fp32":
        raise MobileVLAError("TensorRT engines are fp16 or int8; use --precision fp16/int8/auto, or --backend "
                             "onnxruntime for fp32")
    if wanted == "auto":
        return "int8" if bundle.manifest.has_int8 else "fp16"
    return wanted


def choose_backend(config: RuntimeConfig, bundle: Bundle) -> PolicyBackend:
    """TensorRT when asked for or when auto finds runnable engines; else ONNX Runtime. The choice is logged."""
    from runtime import tensorrt_backend

    if config.precision == "fp32" and config.backend == "auto":
        log.info("backend onnxruntime (--precision fp32: TensorRT engines are fp16/int8)")
    else:
        precision = tensorrt_precision(config.precision, bundle)
        if tensorrt_backend.choose_backend(config.backend, bundle, precision).backend == "tensorrt":
            # load_bundle has already hashed the engine files when verification is on
            return tensorrt_backend.open_tensorrt_backend(bundle, precision, verify=False)
    backend = onnx_backend(bundle, onnx_precision(config.precision, bundle), config.threads)
    log.info("running %s", backend.name)
    return backend

