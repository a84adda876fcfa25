"""`build_engines --slim --bundle DIR`: a bundle holding only what the robot runs (docs/design.md §3).

A full bundle carries the CPU's graphs (FP32, the FP32 Q/DQ and the CPU INT8 forms) beside the device's FP16-typed
ones: at real size that is ~13 GB the Jetson never reads. Slimming deletes every part file the device's engine
builds do not read (`PartEntry.device_files`: the FP16-typed graphs, or the FP32 graph of a part whose FP16 graph
fell back), removes them from the manifest and marks it `target: device`. The runtime then refuses ONNX Runtime on
it with a message (the CPU needs the full bundle), and `build_engines --engines-only` builds from what is left.
Imports no torch or onnx: it runs on the device as well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.bundle import load_bundle
from runtime.bundle_write import write_manifest
from runtime.errors import MobileVLAError

log = logging.getLogger("build_engines.slim")


@dataclass(frozen=True)
class SlimResult:
    removed: list[str]
    freed_bytes: int
    kept_bytes: int


def slim_bundle(root: Path) -> SlimResult:
    """Delete the part files the device does not run; the manifest is rewritten first (a crash leaves a slim bundle
    with a few stray files, never a manifest that lists missing ones)."""
    bundle = load_bundle(root)
    manifest = bundle.manifest
    if manifest.target == "device":
        raise MobileVLAError(f"bundle {root} is already slimmed for the device; nothing to remove")
    if not any(entry.fp16_onnx for entry in manifest.parts.values()):
        raise MobileVLAError(
            f"bundle {root} has no FP16-typed device graphs (it was built before them): slimming would leave only "
            f"the FP32 graphs it already has. Rebuild it with this build_engines, then slim it"
        )
    keep = {name for entry in manifest.parts.values() for name in entry.files("device")}
    every = {name for entry in manifest.parts.values() for name in entry.files()}
    removed = sorted(every - keep)
    freed = sum(bundle.path(name).stat().st_size for name in removed)
    files = {name: digest for name, digest in manifest.files.items() if name not in removed}
    write_manifest(bundle.root, replace(manifest, files=files, target="device"))
    for name in removed:
        bundle.path(name).unlink()
        log.info("removed %s (not run on the device)", name)
    kept = sum(path.stat().st_size for path in Path(root).rglob("*") if path.is_file())
    return SlimResult(removed, freed, kept)
