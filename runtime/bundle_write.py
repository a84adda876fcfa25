"""Writing bundles (the format itself is runtime/bundle.py): the manifest written atomically, file hashes, and the
staging directory a build writes into and swaps in whole, so a failed build never leaves a bundle that looks
complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from runtime.bundle import MANIFEST_NAME, Manifest, sha256_file


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write atomically: readers see the old manifest or the new one, never half of one."""
    partial = root / f".{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(partial, root / MANIFEST_NAME)


def hash_files(root: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(root / name) for name in sorted(names)}


def staging_name(final_name: str, pid: int) -> str:
    """The staging directory of a build of `final_name` by process `pid` (a later build removes it once `pid` is
    gone: build_engines/output_dir.py)."""
    return f".{final_name}.staging-{pid}"


def retired_name(final_name: str, pid: int) -> str:
    """Where the previous bundle is moved during the swap, for the moment between the two renames."""
    return f".{final_name}.old-{pid}"


@contextlib.contextmanager
def staged_bundle_dir(final: Path, before_swap: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory beside `final`; on success swap it in, on error remove it.

    The manifest is the last file a build writes, and the swap is a rename, so readers see either the old
    complete bundle or the new complete one. `before_swap` runs just before the swap (a build re-checks there
    that what it replaces is still only a bundle); whatever it raises leaves `final` untouched.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / staging_name(final.name, os.getpid())
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        if not (staging / MANIFEST_NAME).is_file():
            raise RuntimeError(f"bug: staged bundle {staging} has no manifest")
        if before_swap is not None:
            before_swap()
        retired = final.parent / retired_name(final.name, os.getpid())
        if final.exists():
            os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
