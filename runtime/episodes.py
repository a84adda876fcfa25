"""The robot's HDF5 episode format (docs/design.md §2.5), read lazily and validated: defined once, used by every side.

It lives in `runtime/` because the runtime replays and scores episodes (`--source h5:`, `--score`) and must not
import `calibration/`; calibration samples through the same reader, so both see the same frames.

One file per episode: `images (N, H, W, 3) uint8` (any size; BGR or RGB per setting), optional `actions (N, >=d)`
float, optional `action_event_types (N,)`, optional `language_instruction` (dataset or attribute), attributes
`episode_name`, `num_frames`, ... A file is opened once and frames are read one at a time: a 720p episode is ~50 MB.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from runtime.errors import MobileVLAError
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice, prepare_frame

log = logging.getLogger("runtime.episodes")

H5_SUFFIXES = (".h5", ".hdf5")
_EPISODE_NAME = re.compile(r"^episode_\d{8}_\d{6}_(?P<scenario>.+)$")


def scenario_of(name: str) -> str:
    """`episode_20250808_123136_1box_vert_left` -> `1box_vert_left`; other names are their own scenario."""
    match = _EPISODE_NAME.match(name)
    return match.group("scenario") if match else name


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise MobileVLAError("reading HDF5 episodes needs h5py: `pip install h5py` (the `replay` extra)") from exc
    return h5py


def _read_instruction(handle: Any) -> str | None:
    if "language_instruction" in handle:
        value = handle["language_instruction"][()]
    elif "language_instruction" in handle.attrs:
        value = handle.attrs["language_instruction"]
    else:
        return None
    if isinstance(value, np.ndarray):
        value = value.flat[0] if value.size else ""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.strip() or None


class Episode:
    """One open episode file. Use as a context manager; frames are read on demand."""

    def __init__(self, path: Path, require_actions: bool = False, action_dim: int = 2) -> None:
        self.path = Path(path)
        h5py = _h5py()
        try:
            self._handle = h5py.File(self.path, "r")
        except OSError as exc:
            raise MobileVLAError(
                f"{self.path} is not a readable HDF5 episode: not HDF5, or truncated ({exc}); record or copy it again"
            ) from exc
        try:
            self._images, self._actions = self._validate(require_actions, action_dim)
            self.name = str(self._attr("episode_name", self.path.stem))
            self.instruction = _read_instruction(self._handle)
        except BaseException:
            self._handle.close()
            raise
        self.scenario = scenario_of(self.name)

    def _attr(self, key: str, default: Any) -> Any:
        value = self._handle.attrs.get(key, default)
        return value.decode() if isinstance(value, bytes) else value

    def _validate(self, require_actions: bool, action_dim: int) -> tuple[Any, Any]:
        h5py = _h5py()
        handle = self._handle
        if "images" not in handle or not isinstance(handle["images"], h5py.Dataset):
            raise MobileVLAError(f"{self.path}: no `images` dataset; expected (N, H, W, 3) uint8 frames")
        images = handle["images"]
        if images.dtype != np.uint8:
            raise MobileVLAError(f"{self.path}: `images` has dtype {images.dtype}; expected uint8 (N, H, W, 3)")
        if images.ndim != 4 or images.shape[3] != 3:
            raise MobileVLAError(f"{self.path}: `images` has shape {images.shape}; expected (N, H, W, 3) uint8")
        if images.shape[0] == 0:
            raise MobileVLAError(f"{self.path}: `images` holds no frames")
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise MobileVLAError(f"{self.path}: `images` has shape {images.shape}: frames of {images.shape[1]}x"
                                 f"{images.shape[2]} pixels hold no picture; expected (N, H, W, 3) with H, W > 0")
        actions = handle["actions"] if "actions" in handle else None
        if actions is None:
            if require_actions:
                raise MobileVLAError(f"{self.path}: no `actions` dataset; scoring needs (N, {action_dim}+) actions")
            return images, None
        if actions.ndim != 2 or actions.shape[1] < action_dim or actions.dtype.kind != "f":
            raise MobileVLAError(
                f"{self.path}: `actions` has shape {actions.shape} dtype {actions.dtype}; expected float (N, >= "
                f"{action_dim}) [linear_x, linear_y, ...]"
            )
        if actions.shape[0] < images.shape[0]:
            raise MobileVLAError(
                f"{self.path}: `actions` has {actions.shape[0]} rows for {images.shape[0]} images; expected one "
                f"action per frame"
            )
        return images, actions

    @property
    def num_frames(self) -> int:
        return int(self._images.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self._images.shape[1]), int(self._images.shape[2])

    @property
    def has_actions(self) -> bool:
        return self._actions is not None

    def image(self, index: int) -> np.ndarray:
        """The stored `(H, W, 3)` uint8 image, channels as recorded."""
        try:
            return np.asarray(self._images[index])
        except OSError as exc:  # h5py's error for a damaged or truncated chunk
            raise MobileVLAError(f"{self.path}: frame {index} cannot be read ({exc}); the file is damaged") from exc

    def frame(self, index: int, color: str, pre: Preprocessing) -> np.ndarray:
        """Frame `index` as the vision graph's uint8 `(S, S, C)` input, through the one preprocessing definition."""
        return prepare_frame(self.image(index), color, pre)

    def actions(self, action_dim: int) -> np.ndarray:
        """`(N, action_dim)` float32 recorded actions (small: read whole)."""
        if self._actions is None:
            raise MobileVLAError(f"{self.path}: no `actions` dataset")
        return np.asarray(self._actions[: self.num_frames, :action_dim], dtype=np.float32)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Episode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class EpisodeInfo:
    """What a scan learned about a usable episode (the file is closed again)."""

    path: Path
    name: str
    scenario: str
    num_frames: int
    frame_shape: tuple[int, int]
    instruction: str | None
    has_actions: bool


@dataclass(frozen=True)
class DatasetScan:
    episodes: tuple[EpisodeInfo, ...]
    skipped: tuple[tuple[Path, str], ...]  # (file, why)

    @property
    def total_frames(self) -> int:
        return sum(e.num_frames for e in self.episodes)


def episode_files(path: Path) -> list[Path]:
    """An episode file, or the sorted `.h5`/`.hdf5` files of a directory."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in H5_SUFFIXES and p.is_file())
        if not files:
            raise MobileVLAError(
                f"{path} holds no .h5/.hdf5 episode files; point it at the robot's recorded episodes (or generate "
                f"synthetic ones with `python -m build_engines.demo.episodes DIR`)"
            )
        return files
    raise MobileVLAError(f"episode path {path} does not exist; expected an episode .h5 file or a directory of them")


def scan_episodes(path: Path, require_actions: bool = False, action_dim: int = 2, min_frames: int = 1) -> DatasetScan:
    """Validate every episode under `path`; bad ones are skipped with a warning naming the file and the fault.

    Raises when none is usable, listing why each was refused.
    """
    usable: list[EpisodeInfo] = []
    skipped: list[tuple[Path, str]] = []
    for file in episode_files(path):
        try:
            with Episode(file, require_actions, action_dim) as episode:
                if episode.num_frames < min_frames:
                    raise MobileVLAError(
                        f"{file}: {episode.num_frames} frames, shorter than the {min_frames} this needs (the "
                        f"policy's history window)"
                    )
                usable.append(EpisodeInfo(file, episode.name, episode.scenario, episode.num_frames,
                                          episode.frame_shape, episode.instruction, episode.has_actions))
        except MobileVLAError as exc:
            log.warning("skipping episode: %s", exc)
            skipped.append((file, str(exc)))
    if not usable:
        reasons = "; ".join(reason for _, reason in skipped[:5])
        raise MobileVLAError(f"no usable episode under {path} ({len(skipped)} refused): {reasons}")
    return DatasetScan(tuple(usable), tuple(skipped))


@dataclass
class EpisodeFrame:
    episode: EpisodeInfo
    index: int
    pixels: np.ndarray  # the vision graph's uint8 (S, S, C) frame
    action: np.ndarray | None  # recorded action[:action_dim] for this frame


def iter_episode_frames(info: EpisodeInfo, color: str, pre: Preprocessing, action_dim: int = 2,
                        indices: list[int] | None = None) -> Iterator[EpisodeFrame]:
    """The episode's frames (all, or `indices` in order) through the one preprocessing path, read lazily."""
    check_choice("episode colour order", color, COLOR_ORDERS)
    with Episode(info.path) as episode:
        actions = episode.actions(action_dim) if episode.has_actions else None
        for index in range(episode.num_frames) if indices is None else indices:
            action = None if actions is None else actions[index]
            yield EpisodeFrame(info, index, episode.frame(index, color, pre), action)
