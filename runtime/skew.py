"""Train-serve skew of the camera path's resize (docs/design.md §2.1; docs/runtime.md, "Train-serve skew of the
camera resize").

The policy was trained on frames resized by PIL with the bundle's `preprocessing.resize` filter (antialiased when
it shrinks); the camera resizes in its pipeline (`videoscale`, or the Jetson's VIC through `nvvidconv`). This
replays recorded episodes twice per resize path: once through the training resize (`prepare_frame`), once through
the path (the camera tail itself, runtime/sources/gstreamer/resize.py), runs the same policy over both with a fresh
history per episode, and compares chunk[0]: MAE, max error, sign agreement, per axis, plus the pixels' mean
difference (and against the training frame with R and B swapped: a BGR/RGB mistake shows there) and the resize's
cost per frame. A path is close enough when chunk[0] MAE <= `SKEW_MAE_BOUND` and sign agreement >=
`SKEW_SIGN_BOUND` (both against the training-resize run, not against the recorded actions).

Paths: `training` (the sanity row: the training resize again, skew 0), `videoscale:METHOD`, `nvvidconv:METHOD` (on
a Jetson), `two-stage:SCALER:METHOD` (the scaler to 2·S, then `videoscale` with `source.resize_method` for the
last step on the CPU: what `source.two_stage` runs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle import Bundle, load_bundle
from runtime.config import SourceConfig
from runtime.episodes import Episode, scan_episodes
from runtime.errors import MobileVLAError
from runtime.pipeline import OutputSettings, PolicyPipeline
from runtime.preprocess import Preprocessing, model_channel_indices, prepare_frame
from runtime.scoring import DEFAULT_DEAD_BAND, score

log = logging.getLogger("runtime.skew")

SKEW_MAE_BOUND = 0.02  # chunk[0] MAE against the training-resize run, in the policy's output units
SKEW_SIGN_BOUND = 0.98  # sign agreement (all axes, dead band ±DEFAULT_DEAD_BAND) against the training-resize run
TRAINING = "training"
TWO_STAGE = "two-stage"
RESIZE_PATHS = ("training", "pipeline")  # `runtime --score --resize-path`
PATH_FORMS = "training, videoscale:METHOD, nvvidconv:METHOD, two-stage:videoscale|nvvidconv:METHOD"


@dataclass(frozen=True)
class ResizePath:
    name: str  # as written: `training`, `videoscale:lanczos`, `two-stage:nvvidconv:nearest`
    scaler: str | None = None  # videoscale | nvvidconv; None: the training resize
    method: str | None = None
    two_stage: bool = False

    @property
    def kind(self) -> str:
        return TRAINING if self.scaler is None else TWO_STAGE if self.two_stage else "pipeline"


def parse_path(text: str) -> ResizePath:
    """`training`, `videoscale:METHOD`, `nvvidconv:METHOD` or `two-stage:SCALER:METHOD`; an error lists the forms."""
    from runtime.sources.gstreamer.resize import SCALERS  # GStreamer's modules load only when a pipeline is built

    if text == TRAINING:
        return ResizePath(text)
    parts = text.split(":")
    two_stage = parts[0] == TWO_STAGE
    rest = parts[1:] if two_stage else parts
    if len(rest) != 2 or rest[0] not in SCALERS or rest[1] not in SCALERS[rest[0]]:
        known = "; ".join(f"{name} methods: {', '.join(methods)}" for name, methods in SCALERS.items())
        raise MobileVLAError(f"--resize-method {text!r} is not a resize path; expected {PATH_FORMS} ({known})")
    return ResizePath(text, rest[0], rest[1], two_stage)


def default_paths() -> list[ResizePath]:
    """Every path this host can run: the training row, each videoscale method, each nvvidconv method where
    nvvidconv exists (a Jetson), and the two-stage path from each scaler's nearest (its cheapest, worst case)."""
    from runtime.sources.gstreamer.resize import SCALERS, scaler_available

    paths = [ResizePath(TRAINING)]
    scalers = [name for name in SCALERS if scaler_available(name)]
    for scaler in scalers:
        paths += [ResizePath(f"{scaler}:{method}", scaler, method) for method in SCALERS[scaler]]
    for scaler in scalers:
        nearest = SCALERS[scaler][0]
        paths.append(ResizePath(f"{TWO_STAGE}:{scaler}:{nearest}", scaler, nearest, True))
    return paths


@dataclass
class _Tally:
    """One path's chunk[0]s and pixel differences over the replay, and what its resize cost."""

    predictions: list[np.ndarray] = field(default_factory=list)
    pixel_sum: float = 0.0
    swapped_sum: float = 0.0
    pixels: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # two-stage: the CPU step alone
    frames: int = 0


class _Resizers:
    """Each path's resize pipelines, built once per image size and reused across episodes."""

    def __init__(self, pre: Preprocessing, color: str, last_method: str, announce: str | None) -> None:
        self.pre, self.color, self.last_method, self.announce = pre, color, last_method, announce
        self._open: dict[tuple[str, tuple[int, int]], Any] = {}

    def _get(self, key: str, shape: tuple[int, int], make: Any) -> Any:
        if (key, shape) not in self._open:
            self._open[(key, shape)] = make()
        return self._open[(key, shape)]

    def run(self, path: ResizePath, image: np.ndarray, tally: _Tally) -> np.ndarray:
        from runtime.sources.gstreamer.pipeline import TWO_STAGE_FACTOR
        from runtime.sources.gstreamer.resize import last_step_resizer, scaler_resizer

        shape = (image.shape[0], image.shape[1])
        if path.scaler is None:
            start = time.perf_counter()
            frame = prepare_frame(image, self.color, self.pre)
            tally.seconds += time.perf_counter() - start
            return frame
        assert path.method is not None
        middle = self.pre.image_size * TWO_STAGE_FACTOR
        size = middle if path.two_stage else None
        scaler, method = path.scaler, path.method
        first = self._get(f"{scaler}:{method}:{size}", shape, lambda: scaler_resizer(
            scaler, method, self.pre, self.color, shape, size, self.announce))
        before = first.seconds
        frame = first.resize(image)
        tally.seconds += first.seconds - before
        if path.two_stage:
            last = self._get("last", (middle, middle), lambda: last_step_resizer(self.pre, self.last_method, middle))
            before = last.seconds
            frame = last.resize(frame)
            tally.seconds += last.seconds - before
            tally.cpu_seconds += last.seconds - before
        return frame

    def close(self) -> None:
        for resizer in self._open.values():
            resizer.close()
        self._open.clear()


def _tally_pixels(tally: _Tally, frames: list[np.ndarray], training: list[np.ndarray], slots: list[int]) -> None:
    """Mean |difference| of the model's three channels against the training frame, and against it with R and B
    swapped (nearer that: the path swapped the channels)."""
    for got, want in zip(frames, training, strict=True):
        a, b = got[..., slots].astype(np.int16), want[..., slots].astype(np.int16)
        tally.pixel_sum += float(np.abs(a - b).sum())
        tally.swapped_sum += float(np.abs(a - b[..., ::-1]).sum())
        tally.pixels += a.size


def _run_episode(pipeline: PolicyPipeline, frames: list[np.ndarray], instruction: str, dim: int) -> np.ndarray:
    """chunk[0] per frame from a fresh history, as the replay runs an episode."""
    pipeline.reset()
    if instruction != pipeline.instruction:
        pipeline.set_instruction(instruction)
    return np.stack([pipeline.step(frame).velocity[:dim].copy() for frame in frames])


def measure_skew(bundle: Bundle, episodes: Path, paths: list[ResizePath] | None = None, *, color: str = "bgr",
                 precision: str = "fp32", threads: int = 0, max_episodes: int | None = None,
                 frames: int | None = None, instruction: str | None = None, output: OutputSettings | None = None,
                 source: SourceConfig | None = None, announce: str | None = None) -> dict[str, Any]:
    """The skew report (a JSON-ready dict; `skew_markdown`/`skew_text` render it) of `paths` (default: every one
    this host runs) on the episodes under `episodes`: the first `max_episodes`, at most `frames` frames in all.
    `source`: the capture settings whose methods the verdict names (`resize_method` is also the two-stage path's
    last step; default: the built-in defaults). `announce` plants a channel-order mistake (tests only)."""
    from runtime.backends.onnx_forms import open_onnx_backend

    paths = default_paths() if paths is None else paths
    if not any(p.kind == TRAINING for p in paths):
        paths = [ResizePath(TRAINING), *paths]
    manifest = bundle.manifest
    pre, dim = manifest.preprocessing, manifest.policy.action_dim
    source = source or SourceConfig()
    scan = scan_episodes(episodes)
    chosen = scan.episodes[:max_episodes] if max_episodes else scan.episodes
    skipped = [(file.name, why) for file, why in scan.skipped]
    reference: list[np.ndarray] = []
    tallies = {path.name: _Tally() for path in paths}
    slots = list(model_channel_indices(pre))
    resizers = _Resizers(pre, color, source.resize_method, announce)
    backend = open_onnx_backend(precision, bundle, threads)
    used = total = 0
    try:
        with backend:
            pipeline = PolicyPipeline(bundle, backend, instruction, output)
            for info in chosen:
                if frames is not None and total >= frames:
                    break
                count = info.num_frames if frames is None else min(info.num_frames, frames - total)
                training: list[np.ndarray] = []
                resized: dict[str, list[np.ndarray]] = {path.name: [] for path in paths}
                try:
                    with Episode(info.path) as episode:
                        for index in range(count):  # one 720p image at a time; only model-size frames are kept
                            image = episode.image(index)
                            training.append(prepare_frame(image, color, pre))
                            for path in paths:
                                resized[path.name].append(resizers.run(path, image, tallies[path.name]))
                except MobileVLAError as exc:
                    if not str(exc).startswith(str(info.path)):
                        raise  # a resize pipeline's failure, not a damaged episode
                    log.warning("skew: episode %s skipped: %s", info.name, exc)
                    skipped.append((info.name, str(exc)))
                    continue
                text = instruction or info.instruction or manifest.prompt.default_instruction
                reference.append(_run_episode(pipeline, training, text, dim))
                for path in paths:
                    tally = tallies[path.name]
                    _tally_pixels(tally, resized[path.name], training, slots)
                    tally.predictions.append(_run_episode(pipeline, resized[path.name], text, dim))
                    tally.frames += count
                used += 1
                total += count
    finally:
        resizers.close()
    if not reference:
        raise MobileVLAError(f"no episode under {episodes} could be replayed for the skew report "
                             f"({'; '.join(why for _, why in skipped) or 'none left after the limits'})")
    target = np.concatenate(reference)
    rows = [_row(path, tallies[path.name], target) for path in paths]
    configured = {"source.resize_method": f"videoscale:{source.resize_method}",
                  "source.vic_resize_method": f"nvvidconv:{source.vic_resize_method}"}
    return {
        "episodes": str(episodes), "episodes_used": used, "frames": total, "precision": precision,
        "training_resize": f"PIL {pre.resize} (bundle preprocessing.resize), channels {color}",
        "bound": {"mae": SKEW_MAE_BOUND, "sign_agreement": SKEW_SIGN_BOUND, "dead_band": DEFAULT_DEAD_BAND},
        "configured": configured, "rows": rows, "verdict": _verdict(rows, configured),
        "skipped_episodes": [{"episode": name, "why": why} for name, why in skipped],
    }


def _row(path: ResizePath, tally: _Tally, target: np.ndarray) -> dict[str, Any]:
    pred = np.concatenate(tally.predictions)
    finite = bool(np.isfinite(pred).all())
    scores = score(np.nan_to_num(pred, nan=1e6, posinf=1e6, neginf=-1e6), target)
    pixel = tally.pixel_sum / tally.pixels
    swapped = tally.swapped_sum / tally.pixels
    within = finite and scores.mae <= SKEW_MAE_BOUND and scores.direction >= SKEW_SIGN_BOUND
    return {
        "path": path.name, "kind": path.kind, "frames": tally.frames,
        "mae": round(scores.mae, 6) if finite else None,
        "max_abs_err": round(scores.max_abs_err, 6) if finite else None,
        "sign_agreement": round(scores.direction, 4),
        "axes": {name: {"mae": round(a.mae, 6), "max_abs_err": round(a.max_abs_err, 6),
                        "sign_agreement": round(a.direction, 4)} for name, a in scores.axes.items()},
        "pixel_mae": round(pixel, 3), "pixel_mae_rb_swapped": round(swapped, 3),
        # the frame is nearer the training frame with R and B swapped than as delivered: a channel-order mistake
        "channels": "ok" if pixel <= swapped else "swapped",
        "resize_ms": round(tally.seconds / tally.frames * 1e3, 2),
        "cpu_step_ms": round(tally.cpu_seconds / tally.frames * 1e3, 2) if path.two_stage else None,
        "within_bound": within,
    }


def _verdict(rows: list[dict[str, Any]], configured: dict[str, str]) -> dict[str, Any]:
    single = [r for r in rows if r["kind"] == "pipeline" and r["mae"] is not None]
    single.sort(key=lambda r: (r["mae"], r["max_abs_err"], r["resize_ms"]))
    best = single[0] if single else None
    two_stage = [r for r in rows if r["kind"] == TWO_STAGE]
    return {
        "best": best["path"] if best else None,
        "best_within_bound": bool(best and best["within_bound"]),
        # per configured setting that was measured: its path within the bound?
        "configured_within_bound": {key: r["within_bound"] for key, name in configured.items() for r in rows
                                    if r["path"] == name},
        "within_bound": [r["path"] for r in single if r["within_bound"]],
        "channels_swapped": [r["path"] for r in rows if r["channels"] == "swapped"],
        "two_stage": [{"path": r["path"], "within_bound": r["within_bound"], "resize_ms": r["resize_ms"],
                       "cpu_step_ms": r["cpu_step_ms"]} for r in two_stage],
    }


def skew_table(bundle: Bundle | Path | str, episodes: Path | str, max_episodes: int | None = 1,
               frames: int | None = None, color: str = "bgr", threads: int = 0,
               missing_ok: bool = True) -> dict[str, Any]:
    """The skew report for a build report (`build_engines` once the bundle is written): every path this host runs,
    FP32 graphs, the first `max_episodes` episodes (demo bundle, 2 cores: ~4 s for 1, ~7 s for 2). Render it with
    `runtime.skew_report.skew_markdown`. Without GStreamer/PyGObject here (`missing_ok`): `{"skipped": why}`."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle), verify_hashes=False)
    if missing_ok:
        from runtime.sources.gstreamer.buffer import gst_modules

        try:
            gst_modules()
        except MobileVLAError as exc:
            log.warning("camera skew not measured: %s", exc)
            return {"skipped": f"GStreamer is not usable here ({exc})", "episodes": str(episodes)}
    return measure_skew(loaded, Path(episodes), color=color, threads=threads, max_episodes=max_episodes,
                        frames=frames)

