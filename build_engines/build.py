"""`build_bundle`: checkpoint -> the family's reference model (its adapter, build_engines/adapters/) -> its ONNX
parts -> parity -> bundle, written atomically.

Where it may write and what it cleans up is output_dir.py; which tokenizer it uses, prompt_tokens.py; the reports,
reports.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from build_engines import device_graphs
from build_engines.adapters import DEFAULT_POLICY, config_policy, load_adapter
from build_engines.adapters.base import PolicyAdapter
from build_engines.checkpoint import ImportedPolicy
from build_engines.cpu_int8 import cpu_int8_bundle, with_cpu_int8
from build_engines.demo.fit import FitSettings
from build_engines.demo.policy import checkpointless_policy, demo_episodes
from build_engines.export import export_part
from build_engines.input_episodes import user_episodes
from build_engines.int8 import GateSettings, Int8Options, Int8Result, quantize_bundle
from build_engines.memory import stage_memory
from build_engines.output_dir import build_temp_dir, check_output, remove_stale
from build_engines.parity import ParityReport, check_parity, parity_failure
from build_engines.presets import PRESETS
from build_engines.prompt_tokens import (
    GENERATED,
    TOKENIZER_FILE,
    prompt_settings,
    special_roles,
    special_token_ids,
    tokenizer_source,
    write_tokenizer,
)
from build_engines.quantize import QuantSettings
from build_engines.reports import append_markdown, build_report, write_reports
from build_engines.tensorrt_build import build_bundle_engines, check_workspace_mb, import_tensorrt
from calibration.sampling import SampleSettings
from runtime import __version__
from runtime.bundle import (
    Manifest,
    PartEntry,
    PolicySettings,
    load_bundle,
    sha256_file,
)
from runtime.bundle_write import hash_files, staged_bundle_dir, write_manifest
from runtime.errors import MobileVLAError, check_range
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice
from runtime.prompt import LAYOUTS, PromptEncoder, PromptSettings
from runtime.skew import skew_table
from runtime.sources.synthetic import synthetic_frame

log = logging.getLogger("build_engines")

DEFAULT_INSTRUCTION = "navigate around the box to the left"
# The trunk runs at the padded prompt length every frame and its attention grows with the square of it; a robot
# instruction is one sentence (~10-30 tokens). 512 is 16x the default and keeps the trunk's masks small.
MAX_PROMPT_TOKENS = 512
MAX_PARITY_FRAMES = 1000
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds: non-negative, 32 bits is what both take everywhere


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    checkpoint: Path | None = None  # None: the embedded demo policy
    config: Path | None = None
    kosmos_dir: Path | None = None
    tokenizer: Path | None = None  # the tokenizer.json the policy was trained with (default: kosmos_dir's)
    preset: str = "kosmos-2"
    layout: str = "robovlms"
    instruction: str = DEFAULT_INSTRUCTION
    max_prompt_tokens: int = 32
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    parity_frames: int = 12
    parity_tolerance: float = 1e-4
    seed: int = 0
    demo_head_variant: str = "velocities"
    policy: str | None = None  # the family (build_engines/adapters/); None: the training config's, else robovlms-lstm
    policy_options: tuple[tuple[str, str], ...] = ()  # --policy-option KEY=VALUE
    random_weights: bool = False  # no checkpoint: random weights at the preset's shapes (export/latency tests)
    episodes: Path | None = None  # the robot's HDF5 episodes: --int8 calibrates on them, the demo fits on them
    episode_color: str = "bgr"  # channel order of the stored images (the recorder writes bgr8)
    int8: bool = False
    sample: SampleSettings = field(default_factory=SampleSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    fit: FitSettings = field(default_factory=FitSettings)
    engines: bool = True  # build TensorRT engines when TensorRT is installed here
    workspace_mb: int | None = None

    @property
    def is_demo(self) -> bool:
        return self.checkpoint is None and not self.random_weights

    @property
    def family(self) -> str:
        return self.policy or config_policy(self.config) or DEFAULT_POLICY

    def adapter(self) -> PolicyAdapter:
        return load_adapter(self.family, dict(self.policy_options))

    def validate(self) -> None:
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("episode colour order", self.episode_color, COLOR_ORDERS)
        self.sample.validate()
        self.quant.validate()
        self.gate.validate()
        check_choice("preset", self.preset, PRESETS)
        if (self.checkpoint is None) != (self.config is None):
            raise MobileVLAError("--checkpoint and --config go together: pass both (or neither for the demo bundle)")
        check_range("--max-prompt-tokens", self.max_prompt_tokens, 1, MAX_PROMPT_TOKENS,
                    fix="the trunk is exported for this many prompt tokens and runs at that length every frame")
        check_range("--parity-frames", self.parity_frames, 1, MAX_PARITY_FRAMES)
        check_range("--parity-tolerance", self.parity_tolerance, 0.0, 1.0, low_open=True,
                    fix="it is the max abs error allowed on de-normalized velocities (default 1e-4)")
        check_range("--seed", self.seed, 0, MAX_SEED)
        if self.workspace_mb is not None:
            check_workspace_mb(self.workspace_mb)
        if self.episodes is not None:
            user_episodes("--calibration-data", self.episodes)

    def inputs(self) -> list[tuple[str, Path]]:
        """The paths this build reads, with the flag that named each: --output must never hold one."""
        named = [("--checkpoint", self.checkpoint), ("--config", self.config), ("--kosmos-dir", self.kosmos_dir),
                 ("--tokenizer", self.tokenizer), ("--calibration-data", self.episodes)]
        return [(flag, path) for flag, path in named if path is not None]


@dataclass
class BuildResult:
    bundle: Path
    parity: ParityReport
    report: dict[str, Any]
    int8: Int8Result | None = None


def calibration_data(options: BuildOptions, imported: ImportedPolicy) -> Path:
    if options.episodes is not None:
        return options.episodes
    if options.is_demo:
        return demo_episodes(options)
    if imported.config.data_dir is not None:
        log.info("calibration data from the training config's train_dataset.data_dir: %s", imported.config.data_dir)
        return user_episodes("train_dataset.data_dir of the training config:", imported.config.data_dir)
    raise MobileVLAError(
        "--int8 needs the robot's HDF5 episodes to calibrate on: pass --calibration-data DIR, or set "
        "train_dataset.data_dir in the training config"
    )


def release_weights(policy: torch.nn.Module) -> None:
    """Free the reference policy's tensors once parity is done (its shapes and settings stay readable)."""
    policy.to(torch.device("meta"))


def content_files(parts: dict[str, PartEntry]) -> list[str]:
    """The bundle's files other than reports and the manifest."""
    files = [TOKENIZER_FILE]
    for entry in parts.values():
        files += entry.files()
    return files


def make_manifest(policy: PolicySettings, imported: ImportedPolicy, prompt: PromptSettings, pre: Preprocessing,
                  parts: dict[str, PartEntry], files: dict[str, str], reports: dict[str, str],
                  source: dict[str, Any]) -> Manifest:
    return Manifest(
        source=source,
        policy=policy,
        preprocessing=pre,
        prompt=prompt,
        action=imported.config.action,
        parts=parts,
        files=files,
        reports=reports,
        producer=f"build_engines {__version__}",
    )


def export_parts(adapter: PolicyAdapter, model: torch.nn.Module, pre: Preprocessing, prompt: PromptSettings,
                 stage: Path, timings: dict[str, float]) -> dict[str, PartEntry]:
    parts = {}
    for part in adapter.parts(model, pre, prompt):
        name = part.name
        started = time.perf_counter()
        external = export_part(part.module, part.spec, stage / f"{name}.onnx")
        timings[f"export_{name}_s"] = round(time.perf_counter() - started, 2)
        parts[name] = PartEntry(part.spec, f"{name}.onnx", external)
        log.info("exported %s.onnx (%s) in %.1f s", name, part.spec.cadence, timings[f"export_{name}_s"])
    return parts


def check_tokenizer(tokenizer: Path, adapter: PolicyAdapter) -> None:
    if adapter.special_tokens is None:
        special_token_ids(tokenizer)
    else:
        special_roles(tokenizer, adapter.special_tokens)


def build_bundle(options: BuildOptions) -> BuildResult:
    options.validate()
    adapter = options.adapter()
    tokenizer = tokenizer_source(options.tokenizer, options.kosmos_dir, generated_ok=options.checkpoint is None)
    if tokenizer is not None:
        check_tokenizer(tokenizer, adapter)  # a bad file is refused now, not after the import
    check_output(options.output, options.inputs())  # before any work: refusing after an hour's import helps nobody
    remove_stale(options.output)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with build_temp_dir() as tmp:
        if options.checkpoint is None:  # the demo, or random weights (build_engines/demo/policy.py)
            options = options if options.random_weights else replace(options, preset="tiny")
            imported, source = checkpointless_policy(options, adapter, Path(tmp))
        else:
            assert options.config is not None
            imported = adapter.import_checkpoint(options.checkpoint, options.config, options.kosmos_dir,
                                                 options.preset)
            source = {"checkpoint": str(options.checkpoint)}
        source["policy"] = adapter.describe()
        source.update({
            "checkpoint_sha256": sha256_file(options.checkpoint) if options.checkpoint else None,
            "config": str(options.config) if options.config else None,
            "kosmos_dir": str(options.kosmos_dir) if options.kosmos_dir else None,
            "preset": options.preset if options.kosmos_dir is None else "from kosmos_dir",
            "lora_layers_merged": imported.lora_merged,
        })
        timings["import_s"] = round(time.perf_counter() - started, 2)
        pre = replace(options.preprocessing, image_mean=imported.config.image_mean,
                      image_std=imported.config.image_std)
        # Checked again just before the swap: the directory may have changed during the build.
        with staged_bundle_dir(options.output, lambda: check_output(options.output, options.inputs())) as stage:
            source.update(write_tokenizer(tokenizer, stage, options.preset))
            prompt = prompt_settings(stage / TOKENIZER_FILE, adapter.prompt_layout or options.layout,
                                     options.instruction, options.max_prompt_tokens,
                                     adapter.vocab_size(imported.policy), tokenizer or GENERATED,
                                     adapter.prompt_template, adapter.special_tokens)
            parts = export_parts(adapter, imported.policy, pre, prompt, stage, timings)
            policy = adapter.settings(imported.policy)
            hashes = hash_files(stage, content_files(parts))  # once: the trunk alone is gigabytes at real size
            write_manifest(stage, make_manifest(policy, imported, prompt, pre, parts, hashes, {}, source))
            parity = run_parity(adapter, imported.policy, stage, options)
            if not parity.passed:
                raise MobileVLAError(parity_failure(parity))  # before any report: nothing of this build is kept
            stage_memory(timings, "export_parity")
            release_weights(imported.policy)  # the ONNX parts hold them now: 6.6 GB back at real size
            int8, data = None, options.episodes
            if options.int8:
                data = calibration_data(options, imported)
                int8_options = Int8Options(data, options.episode_color, options.sample, options.quant, options.gate)
                int8 = quantize_bundle(load_bundle(stage, verify_hashes=False), int8_options)
                timings["int8_s"] = int8.report["seconds"]  # calibration, Q/DQ, gates, FP16-typed device graphs
                timings.update(int8.report["memory"])  # int8_qdq_peak_rss_gb, int8_device_graphs_peak_rss_gb
                # ONNX Runtime's own INT8 forms, gated and timed against FP32 (cpu_int8.py, docs/design.md §4)
                int8 = with_cpu_int8(int8, cpu_int8_bundle(load_bundle(stage, verify_hashes=False), int8_options))
                parts, warnings, device_report = int8.parts, int8.warnings, None  # in the accuracy report
                timings["cpu_int8_s"] = int8.report["cpu_int8"]["seconds"]
                stage_memory(timings, "cpu_int8")
            else:
                device = device_graphs.without_episodes(load_bundle(stage, verify_hashes=False), options.parity_frames,
                                                        options.gate)
                parts, warnings, device_report = device.parts, device.warnings, device.report
                stage_memory(timings, "device_graphs")
            hashes.update(hash_files(stage, [f for f in content_files(parts) if f not in hashes]))
            report = build_report(prompt.layout, options.instruction, source, parity, timings, stage, parts)
            if data is not None:  # what the camera's resize does to chunk[0], before anyone drives (runtime/skew.py)
                report["camera_skew"] = skew_table(stage, data, color=options.episode_color)  # the FP32 graphs
            if device_report is not None:
                report["device_graphs"] = device_report
            reports = write_reports(stage, report, int8)
            if int8 is not None:
                append_markdown(stage / reports["accuracy_readable"], int8.report["cpu_int8"])
            hashes.update(hash_files(stage, list(reports.values())))
            manifest = make_manifest(policy, imported, prompt, pre, parts, hashes, reports, source)
            write_manifest(stage, replace(manifest, warnings=tuple(warnings)))
            if not options.engines:
                report["engines_skipped"] = "--no-engines"
            elif import_tensorrt() is None:
                report["engines_skipped"] = "TensorRT is not installed here"
            else:  # one part at a time, into the staged bundle: a failed engine build keeps the old bundle
                report["engines"] = build_bundle_engines(stage, options.workspace_mb, verify=False)
    return BuildResult(options.output, parity, report, int8)


def run_parity(adapter: PolicyAdapter, model: torch.nn.Module, stage: Path, options: BuildOptions) -> ParityReport:
    bundle = load_bundle(stage, verify_hashes=False)  # hashed a moment ago by this build
    manifest = bundle.manifest
    frames = [synthetic_frame(i, manifest.preprocessing) for i in range(options.parity_frames)]
    prompt_ids = PromptEncoder(bundle.path(TOKENIZER_FILE), manifest.prompt).prompt_ids(options.instruction)
    started = time.perf_counter()
    report = check_parity(adapter, model, bundle, frames, prompt_ids, options.instruction, options.parity_tolerance)
    log.info("parity over %d frames in %.1f s: %s", options.parity_frames, time.perf_counter() - started,
             "passed" if report.passed else "FAILED")
    return report
