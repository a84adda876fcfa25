"""Mobile VLA edge runtime: the lean on-robot core. Imports no torch, transformers or onnx (docs/design.md §3)."""

from runtime.bundle import Bundle, load_bundle
from runtime.errors import MobileVLAError
from runtime.pipeline import OutputSettings, PolicyPipeline, StepResult
from runtime.preprocess import Preprocessing, prepare_frame

__all__ = [
    "Bundle",
    "MobileVLAError",
    "OutputSettings",
    "PolicyPipeline",
    "Preprocessing",
    "StepResult",
    "load_bundle",
    "prepare_frame",
]
__version__ = "0.1.0"
