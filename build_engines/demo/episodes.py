"""Synthetic episodes in exactly the robot's HDF5 format (docs/design.md §2.5), for the demo and the tests.

Each episode is a robot driving around one or two boxes: 720p frames of a tiled floor and boxes whose place and
size change as the robot moves, stored BGR like the robot's recorder (`bgr8`). The recorded actions are a function
of what the frame shows (where the box is, how close), so a policy fitted to them has to read the image:
- `linear_y` steers away from the box, strongest while the box is straight ahead, towards the scenario's side;
- `linear_x` is faster when the box is far or already off to the side;
- `angular_z` is 0 (the robot strafes).

Run `python -m build_engines.demo.episodes DIR` to write a dataset.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import MobileVLAError, run_cli

SCENARIOS = ("1box_vert_left", "1box_vert_right", "2box_vert_left", "2box_vert_right")
INSTRUCTIONS = {
    "1box": "navigate around the box to the {side}",
    "2box": "navigate around the two boxes to the {side}",
}
ACTION_SCALE = 1.0  # largest |velocity| in the recorded actions (m/s); inside the demo's ±1.15 normalization


@dataclass(frozen=True)
class SyntheticSpec:
    episodes_per_scenario: int = 4
    frames: int = 18  # the robot's episodes have 18 frames
    height: int = 720
    width: int = 1280
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 0

    def validate(self) -> None:
        if self.episodes_per_scenario < 1 or self.frames < 1:
            raise MobileVLAError("synthetic episodes need >= 1 episode per scenario and >= 1 frame each")
        if self.height < 16 or self.width < 16:
            raise MobileVLAError(f"synthetic frame size {self.width}x{self.height} is too small; use >= 16x16")
        for name in self.scenarios:
            count, _, side = name.split("_") if name.count("_") == 2 else ("", "", "")
            if count not in INSTRUCTIONS or side not in ("left", "right"):
                raise MobileVLAError(f"unknown scenario {name!r}; expected names like {', '.join(SCENARIOS)}")


@dataclass(frozen=True)
class EpisodeParams:
    """What varies between episodes of one scenario (drawn from the seed)."""

    side: int  # +1: the robot passes on the left (+y), so the box drifts right in the view
    boxes: int
    start_offset: float  # the box's horizontal offset from the centre at frame 0 (fraction of the width)
    start_size: float  # box height at frame 0 (fraction of the frame height)
    box_bgr: tuple[int, int, int]
    floor_bgr: tuple[int, int, int]


def instruction_for(scenario: str) -> str:
    count, _, side = scenario.split("_")
    return INSTRUCTIONS[count].format(side=side)


def draw_params(scenario: str, rng: np.random.Generator) -> EpisodeParams:
    count, _, side = scenario.split("_")
    sign = 1 if side == "left" else -1
    return EpisodeParams(
        side=sign,
        boxes=2 if count == "2box" else 1,
        start_offset=float(rng.uniform(0.0, 0.08)) * sign,
        start_size=float(rng.uniform(0.18, 0.28)),
        box_bgr=tuple(int(v) for v in rng.integers(20, 236, 3)),  # type: ignore[arg-type]
        floor_bgr=tuple(int(v) for v in rng.integers(90, 170, 3)),  # type: ignore[arg-type]
    )


def box_track(params: EpisodeParams, progress: float) -> tuple[float, float]:
    """(horizontal centre as a fraction of the width, height as a fraction of the frame) at `progress` in [0, 1]."""
    offset = params.start_offset + params.side * 0.45 * progress**1.5
    size = params.start_size + 0.35 * math.sin(progress * math.pi * 0.8)
    return 0.5 + offset, size


def action_for(centre: float, size: float, params: EpisodeParams) -> np.ndarray:
    """[linear_x, linear_y, angular_z] from what the frame shows."""
    off_centre = abs(centre - 0.5)
    blocking = max(0.0, 1.0 - off_centre / 0.3)  # 1 with the box dead ahead, 0 once it is 0.3 widths aside
    linear_y = params.side * ACTION_SCALE * blocking * min(1.0, size / 0.35)
    linear_x = ACTION_SCALE * min(1.0, 0.2 + 0.8 * (1.0 - blocking) + 0.6 * max(0.0, 0.3 - size))
    return np.array([linear_x, linear_y, 0.0], dtype=np.float32)


def render_frame(params: EpisodeParams, centre: float, size: float, progress: float, height: int,
                 width: int) -> np.ndarray:
    """A BGR `(H, W, 3)` frame: sky band, a tiled floor that scrolls as the robot drives, the box(es)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    horizon = height * 2 // 5
    frame[:horizon] = (200, 170, 140)  # BGR: a bluish wall
    rows = np.arange(height - horizon, dtype=np.float32)[:, None]
    shade = (0.6 + 0.4 * rows / max(1, height - horizon)).astype(np.float32)
    floor = np.asarray(params.floor_bgr, dtype=np.float32)[None, None, :] * shade[..., None]
    stripes = ((rows + progress * height * 0.5) // max(1, height // 12)) % 2 == 0
    floor = np.where(stripes[..., None], floor * 0.85, floor)
    frame[horizon:] = np.broadcast_to(floor, (height - horizon, width, 3)).astype(np.uint8)
    boxes = [(centre, size)]
    if params.boxes == 2:  # a second, farther box on the side the robot does not take
        boxes.insert(0, (0.5 - params.side * 0.28 + (centre - 0.5) * 0.5, size * 0.6))
    for index, (cx, s) in enumerate(boxes):
        box_h = int(s * height)
        box_w = int(box_h * 1.1)
        bottom = horizon + int((height - horizon) * min(1.0, 0.25 + s))
        left = int(cx * width) - box_w // 2
        y0, y1 = max(0, bottom - box_h), min(height, bottom)
        x0, x1 = max(0, left), min(width, left + box_w)
        if y1 > y0 and x1 > x0:
            colour = params.box_bgr if index == len(boxes) - 1 else tuple(255 - c for c in params.box_bgr)
            frame[y0:y1, x0:x1] = colour
            frame[y0 : min(y1, y0 + max(1, box_h // 8)), x0:x1] = tuple(min(255, c + 50) for c in colour)  # lid
    return frame


def write_episode(path: Path, scenario: str, params: EpisodeParams, frames: int, height: int, width: int,
                  name: str) -> None:
    import h5py

    actions = np.zeros((frames, 3), dtype=np.float32)
    events = ["start_action"] + ["move"] * max(0, frames - 2) + (["stop_action"] if frames > 1 else [])
    with h5py.File(path, "w") as handle:
        images = handle.create_dataset("images", (frames, height, width, 3), dtype=np.uint8,
                                       chunks=(1, height, width, 3), compression="gzip", compression_opts=1)
        for t in range(frames):
            progress = t / max(1, frames - 1)
            centre, size = box_track(params, progress)
            images[t] = render_frame(params, centre, size, progress, height, width)
            actions[t] = action_for(centre, size, params)
        handle.create_dataset("actions", data=actions)
        handle.create_dataset("action_event_types", data=np.array(events, dtype=h5py.string_dtype("utf-8")))
        handle.create_dataset("language_instruction", data=instruction_for(scenario),
                              dtype=h5py.string_dtype("utf-8"))
        handle.attrs["episode_name"] = name
        handle.attrs["num_frames"] = frames
        handle.attrs["total_duration"] = frames * 0.4
        handle.attrs["action_chunk_size"] = 10


def generate_episodes(directory: Path, spec: SyntheticSpec = SyntheticSpec()) -> list[Path]:
    """Write `episodes_per_scenario` episodes per scenario into `directory`; returns the files, sorted."""
    spec.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    paths = []
    for number in range(spec.episodes_per_scenario):
        for k, scenario in enumerate(spec.scenarios):
            serial = number * len(spec.scenarios) + k
            name = f"episode_20250808_{12 + serial // 60:02d}{serial % 60:02d}{(serial * 7) % 60:02d}_{scenario}"
            path = directory / f"{name}.h5"
            write_episode(path, scenario, draw_params(scenario, rng), spec.frames, spec.height, spec.width, name)
            paths.append(path)
    return sorted(paths)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise MobileVLAError(f"--size {text!r} is not WIDTHxHEIGHT (e.g. 1280x720)") from exc
    return width, height


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build_engines.demo.episodes",
                                     description="Write synthetic robot episodes (HDF5, the recorder's format).")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--episodes-per-scenario", type=int, default=4)
    parser.add_argument("--frames", type=int, default=18)
    parser.add_argument("--size", default="1280x720", help="frame WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def body() -> int:
        width, height = parse_size(args.size)
        spec = SyntheticSpec(args.episodes_per_scenario, args.frames, height, width, SCENARIOS, args.seed)
        paths = generate_episodes(args.directory, spec)
        print(f"wrote {len(paths)} episodes ({spec.frames} frames, {width}x{height}) to {args.directory}")
        return 0

    return run_cli("build_engines.demo.episodes", False, body)


if __name__ == "__main__":
    raise SystemExit(main())
