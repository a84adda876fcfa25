"""The bundle format, defined once (docs/design.md §3): a directory with `manifest.json`, ONNX parts, tokenizer,
reports.

`load_bundle` validates on load (format version, action and preprocessing values in range, every listed file
present, sha256) and refuses a bad bundle with a message that says how to fix it. Writing bundles (atomic manifest,
staging directory) is runtime/bundle_write.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.cpu_int8 import CpuInt8Form
from runtime.errors import MobileVLAError
from runtime.plan import RunPlan, run_plan
from runtime.policy_settings import DEFAULT_FAMILY, ActionSettings, PolicySettings
from runtime.preprocess import Preprocessing
from runtime.prompt import PromptSettings
from runtime.specs import PartSpec

__all__ = ["DEFAULT_FAMILY", "ActionSettings", "PolicySettings"]  # defined beside, read with the manifest here
from runtime.value_checks import action_problems

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PartEntry:
    """One part: its spec, FP32 ONNX, optional Q/DQ INT8 ONNX, the precision chosen for it, and built engines.

    `precision` is what the part runs at on the device: `int8` (the Q/DQ ONNX passed the accuracy gate), `fp16`
    (no INT8 asked for, or the Q/DQ part failed the gate and fell back; see the manifest's warnings).
    """

    spec: PartSpec
    onnx: str
    external_data: str | None = None
    int8_onnx: str | None = None
    int8_external_data: str | None = None
    precision: str = "fp16"
    engines: dict[str, Any] = field(default_factory=dict)  # precision -> {file, tensorrt, device, sha256, ...}
    # The device's graphs (build_engines/fp16.py): FP16-typed, and the FP16-typed Q/DQ graph. TensorRT builds them
    # as strongly typed networks; `layers` counts, per device precision, the INT8/FP16/FP32 layers they hold.
    fp16_onnx: str | None = None
    fp16_external_data: str | None = None
    int8_fp16_onnx: str | None = None
    int8_fp16_external_data: str | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    # ONNX Runtime's own INT8 graph of the part and its measured speed (runtime/cpu_int8.py); None: not built
    cpu_int8: CpuInt8Form | None = None

    def files(self, target: str = "full") -> list[str]:
        """The part's files; for a bundle slimmed for the device (`target` device), only what TensorRT builds from."""
        if target == "device":
            return [name for name in self.device_files() if name is not None]
        names = [self.onnx, self.external_data, self.int8_onnx, self.int8_external_data, self.fp16_onnx,
                 self.fp16_external_data, self.int8_fp16_onnx, self.int8_fp16_external_data]
        names += self.cpu_int8.files() if self.cpu_int8 else []
        return [name for name in names if name is not None]

    def device_files(self) -> list[str | None]:
        """What the device's engine builds read: the FP16-typed graphs, or the FP32 ones where a part has none."""
        names = [self.fp16_onnx, self.fp16_external_data] if self.fp16_onnx else [self.onnx, self.external_data]
        if self.precision == "int8":
            names += ([self.int8_fp16_onnx, self.int8_fp16_external_data] if self.int8_fp16_onnx
                      else [self.int8_onnx, self.int8_external_data])
        return names

    def device_onnx(self, precision: str) -> str:
        """The ONNX TensorRT builds the `precision` engine from: the FP16-typed graph when the bundle has it (a
        bundle built before them: the FP32 graph with the FP16 builder flag, or the FP32 Q/DQ graph)."""
        if precision == "int8":
            chosen = self.int8_fp16_onnx or self.int8_onnx
        else:
            chosen = self.fp16_onnx or self.onnx
        if chosen is None:
            raise ValueError(f"bug: part {self.spec.name} has no {precision} graph")
        return chosen

    def onnx_for(self, precision: str) -> str:
        """The ONNX file ONNX Runtime runs for `precision`: the Q/DQ graph for int8 parts, else the FP32 graph."""
        return self.int8_onnx if precision == "int8" and self.precision == "int8" and self.int8_onnx else self.onnx

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "external_data": self.external_data, "int8_onnx": self.int8_onnx,
                "int8_external_data": self.int8_external_data, "fp16_onnx": self.fp16_onnx,
                "fp16_external_data": self.fp16_external_data, "int8_fp16_onnx": self.int8_fp16_onnx,
                "int8_fp16_external_data": self.int8_fp16_external_data, "precision": self.precision,
                "cpu_int8": self.cpu_int8.to_dict() if self.cpu_int8 else None,
                "layers": self.layers, "engines": self.engines, **self.spec.to_dict()}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> PartEntry:
        precision = str(data.get("precision", "fp16"))
        if precision not in PRECISIONS:
            raise ValueError(f"part {name} precision {precision!r} is not one of {PRECISIONS}")
        return cls(
            spec=PartSpec.from_dict(name, data),
            onnx=str(data["onnx"]),
            external_data=data.get("external_data"),
            int8_onnx=data.get("int8_onnx"),
            int8_external_data=data.get("int8_external_data"),
            precision=precision,
            engines=dict(data.get("engines", {})),
            fp16_onnx=data.get("fp16_onnx"),
            fp16_external_data=data.get("fp16_external_data"),
            int8_fp16_onnx=data.get("int8_fp16_onnx"),
            int8_fp16_external_data=data.get("int8_fp16_external_data"),
            layers=dict(data.get("layers", {})),
            cpu_int8=CpuInt8Form.from_dict(data["cpu_int8"]) if data.get("cpu_int8") else None,
        )


@dataclass(frozen=True)
class Manifest:
    source: dict[str, Any]
    policy: PolicySettings
    preprocessing: Preprocessing
    prompt: PromptSettings
    action: ActionSettings
    parts: dict[str, PartEntry]
    files: dict[str, str]  # relative path -> sha256
    reports: dict[str, str]
    producer: str
    warnings: tuple[str, ...] = ()  # e.g. a part that failed the INT8 gate and fell back to FP16
    format_version: int = FORMAT_VERSION
    target: str = "full"  # "device": slimmed to what the robot runs (build_engines --slim); no CPU graphs left

    @property
    def has_int8(self) -> bool:
        return any(entry.precision == "int8" for entry in self.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "producer": self.producer,
            "source": self.source,
            "policy": self.policy.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "prompt": self.prompt.to_dict(),
            "action": self.action.to_dict(),
            "parts": {name: entry.to_dict() for name, entry in self.parts.items()},
            "files": self.files,
            "reports": self.reports,
            "warnings": list(self.warnings),
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            format_version=int(data["format_version"]),
            producer=str(data.get("producer", "")),
            source=dict(data["source"]),
            policy=PolicySettings.from_dict(data["policy"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            prompt=PromptSettings.from_dict(data["prompt"]),
            action=ActionSettings.from_dict(data["action"]),
            parts={str(name): PartEntry.from_dict(str(name), part) for name, part in data["parts"].items()},
            files={str(k): str(v) for k, v in data["files"].items()},
            reports={str(k): str(v) for k, v in data.get("reports", {}).items()},
            warnings=tuple(str(w) for w in data.get("warnings", [])),
            target=bundle_target(data.get("target", "full")),
        )


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        return self.root / relative

    def part_path(self, name: str, precision: str = "fp32") -> Path:
        return self.root / self.manifest.parts[name].onnx_for(precision)

    @property
    def plan(self) -> RunPlan:
        """The run plan (runtime/plan.py); checked when the bundle was loaded."""
        manifest = self.manifest
        return run_plan(tuple(e.spec for e in manifest.parts.values()), manifest.policy.window, str(self.root))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(root: Path, verify_hashes: bool = True) -> Bundle:
    """Read and validate a bundle directory."""
    root = Path(root)
    if not root.is_dir():
        raise MobileVLAError(
            f"bundle directory {root} does not exist; build one with `build_engines` (no arguments builds the demo "
            f"bundle) or pass --bundle PATH"
        )
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise MobileVLAError(
            f"{root} has no {MANIFEST_NAME}: it is not a bundle, or its build did not finish; rebuild it with "
            f"build_engines"
        )
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MobileVLAError(
            f"{manifest_path} is not valid JSON ({exc}); rebuild the bundle with build_engines"
        ) from exc
    if not isinstance(raw, dict):
        raise MobileVLAError(f"{manifest_path} must hold a JSON object; rebuild the bundle with build_engines")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise MobileVLAError(
            f"{manifest_path} has bundle format version {version!r}; this runtime reads version {FORMAT_VERSION}. "
            f"Rebuild the bundle with this version's build_engines, or use the runtime that matches the bundle"
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise MobileVLAError(
            f"{manifest_path} is missing or has a malformed entry ({type(exc).__name__}: {exc}); rebuild the bundle"
        ) from exc
    check_values(manifest_path, manifest)
    check_files(root, manifest, verify_hashes)
    bundle = Bundle(root, manifest)
    bundle.plan  # noqa: B018 - refuses parts whose cadences and sources do not fit together, before anything runs
    return bundle


def check_values(manifest_path: Path, manifest: Manifest) -> None:
    """Refuse action or preprocessing settings that would make every command wrong (NaN, a flipped sign, a
    division by zero) before anything runs on them."""
    problems = [f"action.{p}" for p in action_problems(manifest.action, manifest.policy.action_dim)]
    problems += [f"preprocessing.{p}" for p in manifest.preprocessing.value_problems()]
    if problems:
        raise MobileVLAError(
            f"{manifest_path} has settings out of range: {'; '.join(problems)}. The bundle is damaged or was built "
            f"from a bad training config; fix the config and rebuild the bundle with build_engines"
        )


TARGETS = ("full", "device")


def bundle_target(value: object) -> str:
    if value not in TARGETS:
        raise ValueError(f"target {value!r} is not one of {TARGETS}")
    return str(value)


def check_files(root: Path, manifest: Manifest, verify_hashes: bool) -> None:
    listed = set(manifest.files)
    for entry in manifest.parts.values():
        for needed in entry.files(manifest.target):
            if needed not in listed:
                raise MobileVLAError(f"bundle {root}: manifest lists part file {needed} without a sha256; rebuild")
    for relative, expected in sorted(manifest.files.items()):
        path = root / relative
        if not path.is_file():
            raise MobileVLAError(
                f"bundle {root} is incomplete: {relative} is missing. Copy the whole bundle directory again, or "
                f"rebuild it with build_engines"
            )
        if verify_hashes:
            actual = sha256_file(path)
            if actual != expected:
                raise MobileVLAError(
                    f"bundle {root}: {relative} has sha256 {actual[:16]}…, the manifest says {expected[:16]}…. The "
                    f"file was changed or damaged in transfer; copy the bundle again or rebuild it"
                )


