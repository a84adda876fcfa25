"""Where a build may write, and what it leaves behind (docs/design.md §3: a bundle is swapped in whole).

`--output` is replaced as a whole, so it must be a bundle (its manifest accounts for every entry) or an empty
directory: never a file, the current directory, a directory of other files, or one that holds the build's inputs.
A build that is killed leaves its staging directory beside the output (`.NAME.staging-PID`, `.NAME.old-PID`) and
its temporary directory (`mobile-vla-build-PID-*`); the next build removes those whose process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from runtime.bundle import MANIFEST_NAME
from runtime.errors import MobileVLAError

log = logging.getLogger("build_engines.output")

TEMP_PREFIX = "mobile-vla-build-"
TEMP_PATTERN = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<pid>\d+)-")
SIDE_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?P<pid>\d+)$")  # runtime/bundle_write.py staging_name
BUNDLE_EXTRAS = {MANIFEST_NAME, f".{MANIFEST_NAME}.partial", "engines"}  # engines/: built on the device
SHOW = 5


def build_temp_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory whose name carries this process's id, so a later build can tell it is stale."""
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOW])
    return f"{len(names)} entries ({shown}{', …' if len(names) > SHOW else ''})"


def foreign_entries(directory: Path) -> list[str] | None:
    """The entries of `directory` its bundle manifest does not account for; None when it is not a bundle."""
    try:
        raw = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(raw, dict) and isinstance(raw.get("format_version"), int)
            and str(raw.get("producer", "")).startswith("build_engines") and isinstance(raw.get("files"), dict)):
        return None
    known = BUNDLE_EXTRAS | {str(name).split("/")[0] for name in raw["files"]}
    return sorted(p.name for p in directory.iterdir() if p.name not in known)


def refuse(output: Path, what: str, fix: str) -> MobileVLAError:
    return MobileVLAError(
        f"--output {output} {what}; build_engines replaces the whole --output directory, so it must be an "
        f"existing bundle or an empty or new directory. {fix}"
    )


def check_output(output: Path, inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse an `--output` whose replacement would delete anything but a previous bundle. `inputs` are the
    build's input paths with the flag that named them."""
    new_dir = f"Pass a new directory, e.g. --output {output / 'bundle'}"
    if output.is_symlink():
        raise refuse(output, f"is a symbolic link (to {os.readlink(output)})",
                     "Pass the directory it points to, or a new directory")
    target = output.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise refuse(output, "is the current directory or holds it", new_dir)
    for flag, path in inputs:
        source = path.resolve()
        if source == target or target in source.parents:
            raise refuse(output, f"holds this build's input {flag} {path}",
                         "Keep the inputs outside the bundle directory: pass another --output")
    if not output.exists():
        return
    if not output.is_dir():
        raise refuse(output, "is a file, not a directory",
                     f"Remove it yourself if it is not needed, or pass a new directory, e.g. --output "
                     f"{output.with_name(output.name + '-bundle')}")
    entries = sorted(p.name for p in output.iterdir())
    if not entries:
        return
    foreign = foreign_entries(output)
    if foreign is None:
        raise refuse(output, f"is not a bundle (no valid {MANIFEST_NAME}) and holds {listing(entries)}", new_dir)
    if foreign:
        raise refuse(output, f"is a bundle that also holds files of yours: {listing(foreign)}",
                     "Move them out of the bundle directory, or pass another --output")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user counts: it exists, we may not signal it)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_dirs(output: Path) -> list[Path]:
    """This user's leftovers of builds whose process is gone: beside `output`, and in the temporary directory."""
    candidates: list[tuple[Path, int]] = []
    parent = output.absolute().parent
    if parent.is_dir():
        for path in parent.iterdir():
            match = SIDE_PATTERN.match(path.name)
            if match and match["name"] == output.name:
                candidates.append((path, int(match["pid"])))
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        match = TEMP_PATTERN.match(path.name)
        if match:
            candidates.append((path, int(match["pid"])))
    return sorted(path for path, pid in candidates
                  if not path.is_symlink() and path.is_dir() and path.lstat().st_uid == os.getuid()
                  and not pid_alive(pid))


def remove_stale(output: Path) -> list[Path]:
    """Remove the leftovers of interrupted builds (see `stale_dirs`); returns what was removed."""
    removed = []
    for path in stale_dirs(output):
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("could not remove %s, left by an interrupted build (%s); remove it by hand", path, exc)
            continue
        log.info("removed %s, left by an interrupted build", path)
        removed.append(path)
    return removed
