"""Episodes a user names (`--calibration-data`, the training config's `data_dir`): they must exist and hold HDF5
files; nothing is ever generated into a user's directory."""

from __future__ import annotations

from pathlib import Path

from runtime.episodes import H5_SUFFIXES
from runtime.errors import MobileVLAError
from runtime.paths import default_episodes_dir


def has_episodes(directory: Path) -> bool:
    return directory.is_dir() and any(p.suffix in H5_SUFFIXES and p.is_file() for p in directory.iterdir())


def user_episodes(flag: str, path: Path) -> Path:
    """Episodes the user named must exist: nothing is ever generated into a user's directory."""
    if not path.exists():
        raise MobileVLAError(
            f"{flag} {path} does not exist; pass the directory of the robot's recorded HDF5 episodes"
        )
    if path.is_dir() and not has_episodes(path):
        raise MobileVLAError(
            f"{flag} {path} holds no .h5/.hdf5 episode files; pass the directory of the robot's recorded episodes. "
            f"(Synthetic episodes are only for the demo: without --calibration-data it generates them in its cache, "
            f"{default_episodes_dir()})"
        )
    return path
