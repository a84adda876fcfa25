"""`python -m build_engines.side_by_side`: the training stack's eager PyTorch way and `runtime`, on the same frames.

(a) eager: what the team's server ran per frame (720p BGR frame -> PIL resize -> the processor's normalization ->
    the full Kosmos-2 text forward with the LM head over the prompt padded to 256 positions -> the LSTM head over
    the feature history);
(b) `runtime` on ONNX Runtime, FP32 and INT8 (the same backend choice `runtime --precision` makes, so INT8 is the
    bundle's CPU INT8 form where it has one), each frame through the runtime's own preprocessing.

The three ways run interleaved in one process (the order rotates per frame) so load on the machine hits them
alike; ratios come from the same run. Memory: each way's resident growth when it is loaded, and its largest
transient growth during a step (the kernel's VmHWM, reset before each step). Agreement: chunk[0] of (b) against
(a). The bundle must be a `--random-weights` one: its policy is re-created from the manifest's preset and seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from build_engines.adapters.robovlms import RoboVLMsAdapter
from build_engines.demo.episodes import SyntheticSpec, generate_episodes
from build_engines.presets import PRESETS
from build_engines.reference import ReferencePolicy
from runtime.backends.onnx_forms import open_onnx_backend
from runtime.bundle import Bundle, load_bundle
from runtime.episodes import Episode, scan_episodes
from runtime.errors import MobileVLAError, check_range
from runtime.host import peak_rss_mb, process_memory_mb, reset_peak_rss
from runtime.pipeline import OutputSettings, PolicyPipeline, denormalize
from runtime.preprocess import RESIZE_FILTERS, normalize_frame, prepare_frame
from runtime.prompt import PromptEncoder
from runtime.scoring import score

log = logging.getLogger("build_engines.side_by_side")
SERVER_PADDED_LENGTH = 256  # the team's server padded every prompt to 256 tokens
WAYS = ("eager", "runtime_fp32", "runtime_int8")


class EagerServer:
    """The per-frame eager forward of the training stack (module docstring, way (a))."""

    def __init__(self, policy: ReferencePolicy, bundle: Bundle, instruction: str) -> None:
        manifest = bundle.manifest
        self.policy, self.pre, self.prompt = policy, manifest.preprocessing, manifest.prompt
        self.action = manifest.action
        self.output = OutputSettings(manifest.action.output_scale, manifest.action.output_limit)
        self.rgb = replace(self.pre, color_order="rgb", frame_format="RGB")  # the server's PIL image is RGB
        encoder = PromptEncoder(bundle.path(manifest.prompt.tokenizer_file), manifest.prompt)
        self.prompt_ids = encoder.prompt_ids(instruction)
        self.features: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, image_bgr: np.ndarray) -> np.ndarray:
        size = (self.pre.image_size, self.pre.image_size)
        resized = np.asarray(Image.fromarray(image_bgr[..., ::-1]).resize(size, RESIZE_FILTERS[self.pre.resize]))
        pixels = torch.from_numpy(normalize_frame(resized, self.rgb))  # the processor's rescale and normalize
        embeds = self.policy.image_embeds(pixels)
        feature = self.padded_feature(embeds)
        self.features.append(feature)
        window = self.policy.head_config.window
        outputs = self.policy.head_outputs(torch.stack(self.features[-window:], dim=1))
        self.features = self.features[-window:]
        raw = outputs["actions"][0].numpy()
        return denormalize(raw, self.action, self.output)[0]

    def padded_feature(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The RoboVLMs sequence right-padded to 256 positions, the text model and its LM head over all of them."""
        text = self.policy.backbone.text_model
        embed = text.model.embed_tokens

        def ids(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor([list(values)], dtype=torch.long)

        seq = torch.cat([embed(ids([self.prompt.bos_id])), image_embeds, embed(ids(self.prompt_ids)),
                         self.policy.action_token.view(1, 1, -1), embed(ids([self.prompt.eos_id]))], dim=1)
        index, length = seq.shape[1] - 2, seq.shape[1]
        padding = max(0, SERVER_PADDED_LENGTH - length)
        seq = torch.cat([seq, embed(ids([self.prompt.pad_id] * padding))], dim=1)
        mask = torch.tensor([[1] * length + [0] * padding], dtype=torch.long)
        hidden = text.model(inputs_embeds=seq, attention_mask=mask, use_cache=False).last_hidden_state
        text.lm_head(hidden)  # the server computed the logits of every position and used none of them
        out: torch.Tensor = hidden[:, index]
        return out


class RuntimeWay:
    """`runtime` on ONNX Runtime at one precision: the runtime's preprocessing, then the pipeline's step."""

    def __init__(self, bundle: Bundle, precision: str, instruction: str) -> None:
        self.pre = bundle.manifest.preprocessing
        self.backend = open_onnx_backend(precision, bundle)
        self.backend.activate()
        self.pipeline = PolicyPipeline(bundle, self.backend, instruction)

    def step(self, image_bgr: np.ndarray) -> np.ndarray:
        return self.pipeline.step(prepare_frame(image_bgr, "bgr", self.pre)).velocity.copy()


@dataclass
class WayRecord:
    load_mb: float = 0.0
    step_peak_mb: float = 0.0
    ms: list[float] = field(default_factory=list)
    chunk0: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        times = np.asarray(self.ms)
        return {"p50_ms": round(float(np.percentile(times, 50)), 1),
                "p99_ms": round(float(np.percentile(times, 99)), 1),
                "fps": round(1e3 / float(times.mean()), 2), "resident_mb": round(self.load_mb, 0),
                "step_peak_mb": round(self.step_peak_mb, 0)}


def loaded(make: Callable[[], Any], record: WayRecord) -> Any:
    before = process_memory_mb()[0]
    way = make()
    record.load_mb = process_memory_mb()[0] - before
    return way


def timed_step(way: Any, image: np.ndarray, record: WayRecord, keep: bool) -> None:
    reset_peak_rss()  # where refused, the step peak reads as an upper bound (the lifetime peak)
    before = process_memory_mb()[0]
    started = time.perf_counter()
    velocity = way.step(image)
    elapsed = (time.perf_counter() - started) * 1e3
    record.step_peak_mb = max(record.step_peak_mb, process_memory_mb()[1] - before)
    if keep:
        record.ms.append(elapsed)
        record.chunk0.append(np.asarray(velocity, dtype=np.float32).reshape(-1))


def policy_for(bundle: Bundle) -> ReferencePolicy:
    """The random-weights policy the bundle was built from, re-created from its manifest's preset and seed."""
    source = bundle.manifest.source
    checkpoint = str(source.get("checkpoint", ""))
    if not checkpoint.startswith("random weights"):
        raise MobileVLAError(f"bundle {bundle.root} was built from {checkpoint!r}; the side-by-side benchmark "
                             f"re-creates the policy from a --random-weights bundle's preset and seed: build one "
                             f"with `build_engines --random-weights --preset mid --int8 --output DIR`")
    policy = RoboVLMsAdapter().random_policy(str(source["preset"]), int(source["seed"])).policy
    assert isinstance(policy, ReferencePolicy)
    return policy


def episode_images(directory: Path, frames: int) -> list[np.ndarray]:
    """`frames` recorded 720p BGR images, taken episode after episode."""
    images: list[np.ndarray] = []
    for info in scan_episodes(directory, require_actions=False).episodes:
        with Episode(info.path) as episode:
            images += [episode.image(i) for i in range(info.num_frames)]
        if len(images) >= frames:
            return images[:frames]
    raise MobileVLAError(f"{directory} holds {len(images)} frames; the benchmark needs {frames} (--frames)")


def run(bundle: Bundle, images: Sequence[np.ndarray], warmup: int, instruction: str | None = None) -> dict[str, Any]:
    instruction = instruction or bundle.manifest.prompt.default_instruction
    records = {name: WayRecord() for name in WAYS}
    baseline = process_memory_mb()[0]
    ways = {
        "eager": loaded(lambda: EagerServer(policy_for(bundle), bundle, instruction), records["eager"]),
        "runtime_fp32": loaded(lambda: RuntimeWay(bundle, "fp32", instruction), records["runtime_fp32"]),
        "runtime_int8": loaded(lambda: RuntimeWay(bundle, "int8", instruction), records["runtime_int8"]),
    }
    for index, image in enumerate(images):
        order = WAYS[index % 3:] + WAYS[: index % 3]  # rotate: no way always runs first or last
        for name in order:
            timed_step(ways[name], image, records[name], keep=index >= warmup)
    eager = np.stack(records["eager"].chunk0)
    result: dict[str, Any] = {"frames": len(images) - warmup, "warmup": warmup,
                              "torch_threads": torch.get_num_threads(), "baseline_rss_mb": round(baseline),
                              "process_peak_rss_mb": round(peak_rss_mb()),
                              "ways": {name: record.summary() for name, record in records.items()}}
    for name in ("runtime_fp32", "runtime_int8"):
        scores = score(np.stack(records[name].chunk0), eager)
        result["ways"][name]["vs_eager"] = {"mae": scores.mae, "max_abs_err": scores.max_abs_err,
                                            "sign_agreement": scores.direction}
        result["ways"][name]["speedup_vs_eager"] = round(float(np.mean(records["eager"].ms))
                                                         / float(np.mean(records[name].ms)), 2)
    return result


def markdown(result: dict[str, Any], bundle: Bundle) -> str:
    lines = [f"Side-by-side on {bundle.manifest.source.get('checkpoint')}, {result['frames']} frames "
             f"(+{result['warmup']} warm-up), interleaved:", "",
             "| way | p50 ms | p99 ms | FPS | resident MB | step peak MB | speedup | chunk[0] vs eager "
             "(MAE / max / sign) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, way in result["ways"].items():
        versus = way.get("vs_eager")
        agreement = (f"{versus['mae']:.2e} / {versus['max_abs_err']:.2e} / {versus['sign_agreement']:.1%}"
                     if versus else "reference")
        lines.append(f"| {name} | {way['p50_ms']} | {way['p99_ms']} | {way['fps']} | {way['resident_mb']:.0f} | "
                     f"{way['step_peak_mb']:.0f} | {way.get('speedup_vs_eager', 1.0)}x | {agreement} |")
    return "\n".join(lines) + "\n"


def default_bundle(preset: str, seed: int, cache: Path, episodes: Path) -> Path:
    """A `--random-weights --int8` bundle of `preset` in the cache, built on first use by the `build_engines` command
    in a child process (so the build's memory is not counted against the ways measured here)."""
    bundle = cache / f"side-by-side-{preset}-{seed}"
    if (bundle / "manifest.json").is_file():
        return bundle
    log.info("building %s (random weights, %s preset, --int8): once, then cached", bundle, preset)
    command = [sys.executable, "-m", "build_engines", "--random-weights", "--preset", preset, "--seed", str(seed),
               "--int8", "--calibration-data", str(episodes), "--calibration-frames", "16", "--held-out", "0.5",
               "--parity-frames", "4", "--no-engines", "--output", str(bundle)]
    if subprocess.run(command, check=False).returncode != 0:
        raise MobileVLAError(f"building the benchmark bundle failed: {' '.join(command)} (its log is above)")
    return bundle


def synthetic_episodes(cache: Path) -> Path:
    episodes = cache / "side-by-side-episodes"
    if not episodes.is_dir():
        generate_episodes(episodes, SyntheticSpec(episodes_per_scenario=2, frames=12))
    return episodes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m build_engines.side_by_side", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a --random-weights bundle with INT8 parts (default: builds "
                                                    "one for --preset in --cache on first use)")
    parser.add_argument("--preset", default="mid", help=f"with no --bundle: {' | '.join(PRESETS)} (default mid)")
    parser.add_argument("--seed", type=int, default=0, help="with no --bundle: the weights' seed (default 0)")
    parser.add_argument("--episodes", type=Path, help="HDF5 episodes whose 720p frames are fed (default: the "
                                                      "synthetic ones generated in --cache)")
    parser.add_argument("--frames", type=int, default=20, help="measured frames (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="frames run before measuring (default 2)")
    parser.add_argument("--cache", type=Path, default=Path(".cache"), help="where default bundles and episodes go")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        check_range("--frames", args.frames, 1, 10_000)
        check_range("--warmup", args.warmup, 0, 1_000)
        if args.bundle is None and args.preset not in PRESETS:
            raise MobileVLAError(f"--preset {args.preset!r}: expected one of {', '.join(PRESETS)}")
        episodes = args.episodes or synthetic_episodes(args.cache)
        bundle = load_bundle(args.bundle or default_bundle(args.preset, args.seed, args.cache, episodes))
        images = episode_images(episodes, args.frames + args.warmup)
        result = run(bundle, images, args.warmup)
    except MobileVLAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(result, bundle))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
