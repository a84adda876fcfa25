"""Where a build without a checkpoint gets its policy: the embedded demo (a seeded tiny policy fitted briefly to
synthetic episodes, written as a RoboVLMs checkpoint and imported through the real path), or random weights at a
preset's shapes (export and latency tests)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from build_engines.adapters import DEFAULT_POLICY
from build_engines.checkpoint import ImportedPolicy, import_checkpoint
from build_engines.demo.checkpoint_writer import write_robovlms_checkpoint
from build_engines.demo.episodes import SyntheticSpec, generate_episodes
from build_engines.demo.fit import FitReport, FitSettings, demo_init, fit_head
from build_engines.demo.pinned import pinned_cpu, run_pinned
from build_engines.input_episodes import has_episodes, user_episodes
from build_engines.presets import TINY_VOCAB, HeadConfig, kosmos_config, tiny_head
from build_engines.prompt_tokens import TOKENIZER_FILE, policy_prompt
from build_engines.reference import ReferencePolicy
from build_engines.tokenizer_gen import write_tiny_tokenizer
from build_engines.training_config import write_training_config
from calibration.sampling import split_episodes
from runtime.bundle import ActionSettings
from runtime.episodes import EpisodeInfo, scan_episodes
from runtime.errors import MobileVLAError
from runtime.paths import default_episodes_dir
from runtime.preprocess import Preprocessing
from runtime.prompt import PromptEncoder

if TYPE_CHECKING:
    from build_engines.adapters.base import PolicyAdapter
    from build_engines.build import BuildOptions

log = logging.getLogger("build_engines")

DEMO_NORMALIZATION = ActionSettings(norm_action=True, norm_min=(-1.15,), norm_max=(1.15,))


def seeded_policy(seed: int, preset: str, head: HeadConfig) -> ReferencePolicy:
    """A preset's policy with seeded random weights."""
    torch.manual_seed(seed)
    return ReferencePolicy(kosmos_config(preset), head)


def demo_reference_policy(seed: int, variant: str) -> ReferencePolicy:
    """The tiny demo policy before its checkpoint round trip."""
    return seeded_policy(seed, "tiny", tiny_head(variant))


def demo_episodes(options: BuildOptions) -> Path:
    """The demo's episodes: `--calibration-data`, else synthetic ones in the cache (generated on first use)."""
    if options.episodes is not None:
        return user_episodes("--calibration-data", options.episodes)
    directory = default_episodes_dir()
    if not has_episodes(directory):
        spec = SyntheticSpec(episodes_per_scenario=8, seed=options.seed)
        log.info("generating %d synthetic episodes in %s", spec.episodes_per_scenario * len(spec.scenarios),
                 directory)
        generate_episodes(directory, spec)
    return directory


@dataclass(frozen=True)
class DemoFitJob:
    """What writing the demo checkpoint needs: picklable, for the pinned child (demo/pinned.py)."""

    seed: int
    head_variant: str
    pool: tuple[EpisodeInfo, ...]  # the calibration pool: the held-out episodes are never fitted on
    layout: str
    instruction: str
    max_prompt_tokens: int
    color: str
    preprocessing: Preprocessing
    fit: FitSettings
    workdir: Path

    @property
    def checkpoint(self) -> Path:
        return self.workdir / "demo_policy.ckpt"

    @property
    def config(self) -> Path:
        return self.workdir / "demo_config.json"


def write_demo_checkpoint(job: DemoFitJob) -> FitReport:
    """The seeded tiny policy, rescaled, fitted to the pool, written as a RoboVLMs checkpoint and training config."""
    policy = demo_reference_policy(job.seed, job.head_variant)
    demo_init(policy)
    tokenizer = job.workdir / TOKENIZER_FILE
    write_tiny_tokenizer(tokenizer, vocab_size=TINY_VOCAB)
    prompt = policy_prompt(tokenizer, policy, job.layout, job.instruction, job.max_prompt_tokens)
    fit = fit_head(policy, job.pool, job.color, job.preprocessing, PromptEncoder(tokenizer, prompt), job.instruction,
                   DEMO_NORMALIZATION, job.fit)
    write_robovlms_checkpoint(policy, job.checkpoint, seed=job.seed)
    write_training_config(job.config, policy.head_config, lora_r=4, lora_alpha=8.0, action=DEMO_NORMALIZATION)
    return replace(fit, cpu=pinned_cpu())


def demo_policy(options: BuildOptions, workdir: Path) -> tuple[ImportedPolicy, FitReport]:
    """The embedded default: a seeded tiny policy fitted briefly to the demo episodes' calibration pool (never to
    the held-out ones), written as a RoboVLMs checkpoint, then imported for real.

    The fit runs in a child held to the x86-64 baseline (demo/pinned.py), so every build host fits the same
    weights; without a fit (steps 0, export tests) nothing amplifies float differences and it runs here."""
    head = tiny_head(options.demo_head_variant)
    data = demo_episodes(options)
    scan = scan_episodes(data, require_actions=True, action_dim=head.action_dim, min_frames=head.window)
    job = DemoFitJob(options.seed, options.demo_head_variant, split_episodes(scan.episodes, options.sample).pool,
                     options.layout, options.instruction, options.max_prompt_tokens, options.episode_color,
                     options.preprocessing, options.fit, workdir)
    fit = run_pinned(write_demo_checkpoint, job) if options.fit.steps else write_demo_checkpoint(job)
    if fit.steps:
        log.info("%s", fit.describe())
    log.info("wrote the demo policy as a RoboVLMs-style checkpoint %s (+ %s); importing it", job.checkpoint.name,
             job.config.name)
    return import_checkpoint(job.checkpoint, job.config, preset="tiny"), fit


def checkpointless_policy(options: BuildOptions, adapter: PolicyAdapter,
                          workdir: Path) -> tuple[ImportedPolicy, dict[str, Any]]:
    """The policy of a build without `--checkpoint`, and what the manifest's `source` says of it: random weights at
    the preset's shapes from the family's adapter (no checkpoint round trip: at real size that would need several
    copies of 6.6 GB in memory), or the embedded demo (robovlms-lstm only: its fit trains an LSTM head)."""
    if options.random_weights:
        log.warning("random weights at the %s preset's shapes: for export and latency tests only", options.preset)
        return adapter.random_policy(options.preset, options.seed), {
            "checkpoint": f"random weights ({options.preset} preset)", "seed": options.seed}
    if adapter.family != DEFAULT_POLICY:
        raise MobileVLAError(
            f"the embedded demo is a {DEFAULT_POLICY} policy; for --policy {adapter.family} pass --random-weights "
            f"(with --preset) or --checkpoint and --config"
        )
    imported, fit = demo_policy(options, workdir)
    return imported, {"checkpoint": "embedded demo (tiny preset, fitted to synthetic episodes)", "seed": options.seed,
                      "fit": fit.to_dict()}
