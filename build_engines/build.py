"""`build_bundle`: checkpoint -> reference policy -> three ONNX parts -> parity -> bundle, written atomically."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from build_engines.checkpoint import (
    ImportedPolicy,
    default_training_config,
    import_checkpoint,
    write_robovlms_checkpoint,
    write_training_config,
)
from build_engines.export import export_modules, export_part
from build_engines.fit import FitReport, FitSettings, demo_init, fit_head
from build_engines.int8 import GateSettings, Int8Options, Int8Result, accuracy_markdown, quantize_bundle
from build_engines.parity import ParityReport, check_parity
from build_engines.presets import NUM_IMAGE_TOKENS, PRESETS, TINY_VOCAB, HeadConfig, kosmos_config, tiny_head
from build_engines.quantize import QuantSettings
from build_engines.reference import ReferencePolicy
from build_engines.tensorrt_build import build_bundle_engines, import_tensorrt
from build_engines.tokenizer_gen import write_tiny_tokenizer
from calibration.sampling import SampleSettings, split_episodes
from calibration.synthetic import SyntheticSpec, generate_episodes
from runtime import __version__
from runtime.bundle import (
    ActionSettings,
    Manifest,
    PartEntry,
    PolicySettings,
    hash_files,
    load_bundle,
    sha256_file,
    staged_bundle_dir,
    write_manifest,
)
from runtime.episodes import H5_SUFFIXES, scan_episodes
from runtime.errors import MobileVLAError
from runtime.paths import default_episodes_dir
from runtime.preprocess import COLOR_ORDERS, Preprocessing, check_choice
from runtime.prompt import LAYOUTS, PROMPT_TEMPLATE, PromptEncoder, PromptSettings
from runtime.sources import synthetic_frame
from runtime.specs import PART_NAMES, PartDims, part_specs

log = logging.getLogger("build_engines")

DEFAULT_INSTRUCTION = "navigate around the box to the left"
DEMO_NORMALIZATION = ActionSettings(norm_action=True, norm_min=(-1.15,), norm_max=(1.15,))
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    checkpoint: Path | None = None  # None: the embedded demo policy
    config: Path | None = None
    kosmos_dir: Path | None = None
    preset: str = "kosmos-2"
    layout: str = "robovlms"
    instruction: str = DEFAULT_INSTRUCTION
    max_prompt_tokens: int = 32
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    parity_frames: int = 12
    parity_tolerance: float = 1e-4
    seed: int = 0
    demo_head_variant: str = "velocities"
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

    def validate(self) -> None:
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("episode colour order", self.episode_color, COLOR_ORDERS)
        self.sample.validate()
        self.quant.validate()
        self.gate.validate()
        check_choice("preset", self.preset, PRESETS)
        if (self.checkpoint is None) != (self.config is None):
            raise MobileVLAError("--checkpoint and --config go together: pass both (or neither for the demo bundle)")
        if self.parity_frames < 1:
            raise MobileVLAError(f"--parity-frames must be >= 1, got {self.parity_frames}")
        if self.max_prompt_tokens < 1:
            raise MobileVLAError(f"--max-prompt-tokens must be >= 1, got {self.max_prompt_tokens}")


@dataclass
class BuildResult:
    bundle: Path
    parity: ParityReport
    report: dict[str, Any]
    int8: Int8Result | None = None


def seeded_policy(seed: int, preset: str, head: HeadConfig) -> ReferencePolicy:
    """A preset's policy with seeded random weights."""
    torch.manual_seed(seed)
    return ReferencePolicy(kosmos_config(preset), head)


def demo_reference_policy(seed: int, variant: str) -> ReferencePolicy:
    """The tiny demo policy before its checkpoint round trip."""
    return seeded_policy(seed, "tiny", tiny_head(variant))


def demo_episodes(options: BuildOptions) -> Path:
    """The demo's episodes: `--calibration-data`, else synthetic ones in the cache (generated on first use)."""
    directory = options.episodes or default_episodes_dir()
    if not (directory.is_dir() and any(p.suffix in H5_SUFFIXES for p in directory.iterdir())):
        spec = SyntheticSpec(episodes_per_scenario=8, seed=options.seed)
        log.info("generating %d synthetic episodes in %s", spec.episodes_per_scenario * len(spec.scenarios),
                 directory)
        generate_episodes(directory, spec)
    return directory


def demo_policy(options: BuildOptions, workdir: Path) -> tuple[ImportedPolicy, FitReport]:
    """The embedded default: a seeded tiny policy fitted briefly to the demo episodes' calibration pool (never to
    the held-out ones), written as a RoboVLMs checkpoint, then imported for real."""
    policy = demo_reference_policy(options.seed, options.demo_head_variant)
    demo_init(policy)
    head = policy.head_config
    data = demo_episodes(options)
    scan = scan_episodes(data, require_actions=True, action_dim=head.action_dim, min_frames=head.window)
    pool = split_episodes(scan.episodes, options.sample).pool
    tokenizer = workdir / TOKENIZER_FILE
    write_tiny_tokenizer(tokenizer, vocab_size=TINY_VOCAB)
    encoder = PromptEncoder(tokenizer, prompt_settings(options, tokenizer))
    fit = fit_head(policy, pool, options.episode_color, options.preprocessing, encoder, options.instruction,
                   DEMO_NORMALIZATION, options.fit)
    checkpoint, config = workdir / "demo_policy.ckpt", workdir / "demo_config.json"
    write_robovlms_checkpoint(policy, checkpoint, seed=options.seed)
    write_training_config(config, head, lora_r=4, lora_alpha=8.0, action=DEMO_NORMALIZATION)
    log.info("wrote the demo policy as a RoboVLMs-style checkpoint %s (+ %s); importing it", checkpoint.name,
             config.name)
    return import_checkpoint(checkpoint, config, preset="tiny"), fit


def calibration_data(options: BuildOptions, imported: ImportedPolicy) -> Path:
    if options.episodes is not None:
        return options.episodes
    if options.is_demo:
        return demo_episodes(options)
    if imported.config.data_dir is not None:
        log.info("calibration data from the training config's train_dataset.data_dir: %s", imported.config.data_dir)
        return imported.config.data_dir
    raise MobileVLAError(
        "--int8 needs the robot's HDF5 episodes to calibrate on: pass --calibration-data DIR, or set "
        "train_dataset.data_dir in the training config"
    )


def random_policy(options: BuildOptions) -> ImportedPolicy:
    """Random weights at a preset's real shapes, without a checkpoint round trip (a real-size checkpoint would
    need several copies of 6.6 GB in memory). The Mobile VLA head: velocities, LSTM hidden 512."""
    head = tiny_head() if options.preset == "tiny" else HeadConfig()
    policy = seeded_policy(options.seed, options.preset, head)
    log.warning("random weights at the %s preset's shapes: for export and latency tests only", options.preset)
    return ImportedPolicy(policy, default_training_config(head, DEMO_NORMALIZATION), None, 0, 0)


def write_tokenizer(options: BuildOptions, stage: Path) -> str:
    """The real tokenizer from the Kosmos-2 directory, or the generated tiny one; returns where it came from."""
    target = stage / TOKENIZER_FILE
    if options.kosmos_dir is not None:
        source = options.kosmos_dir / TOKENIZER_FILE
        if not source.is_file():
            raise MobileVLAError(
                f"Kosmos-2 directory {options.kosmos_dir} has no {TOKENIZER_FILE}; save it there with "
                f"`AutoProcessor.from_pretrained(DIR).tokenizer.save_pretrained(DIR)` on a machine that has it"
            )
        shutil.copyfile(source, target)
        return str(source)
    if options.preset != "tiny":
        log.warning("no --kosmos-dir: using the generated tiny tokenizer; prompts will NOT match a trained "
                    "Kosmos-2 policy (fine for random-weight export tests only)")
    write_tiny_tokenizer(target, vocab_size=TINY_VOCAB)
    return "generated (tiny preset)"


def prompt_settings(options: BuildOptions, tokenizer: Path) -> PromptSettings:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    found = {name: tok.token_to_id(name) for name in ("<s>", "</s>", "<pad>", "<grounding>")}
    absent = [name for name, value in found.items() if value is None]
    if absent:
        raise MobileVLAError(f"tokenizer {tokenizer} lacks the Kosmos-2 special tokens {absent}")
    ids = {name: int(value) for name, value in found.items() if value is not None}
    return PromptSettings(
        layout=options.layout, template=PROMPT_TEMPLATE, default_instruction=options.instruction,
        max_prompt_tokens=options.max_prompt_tokens, num_image_tokens=NUM_IMAGE_TOKENS,
        bos_id=ids["<s>"], eos_id=ids["</s>"], pad_id=ids["<pad>"], tokenizer_file=TOKENIZER_FILE,
    )


def content_files(parts: dict[str, PartEntry]) -> list[str]:
    """The bundle's files other than reports and the manifest."""
    files = [TOKENIZER_FILE]
    for entry in parts.values():
        files += entry.files()
    return files


def make_manifest(imported: ImportedPolicy, prompt: PromptSettings, pre: Preprocessing,
                  parts: dict[str, PartEntry], files: dict[str, str], reports: dict[str, str],
                  source: dict[str, Any]) -> Manifest:
    head = imported.policy.head_config
    return Manifest(
        source=source,
        policy=PolicySettings(head.variant, head.chunk, head.window, head.action_dim, head.hidden_size,
                              imported.policy.text_dim),
        preprocessing=pre,
        prompt=prompt,
        action=imported.config.action,
        parts=parts,
        files=files,
        reports=reports,
        producer=f"build_engines {__version__}",
    )


def export_parts(policy: ReferencePolicy, pre: Preprocessing, prompt: PromptSettings, stage: Path,
                 timings: dict[str, float]) -> dict[str, PartEntry]:
    head = policy.head_config
    dims = PartDims(pre.image_size, pre.channels, prompt.num_image_tokens, policy.text_dim, prompt.sequence_length,
                    head.window, head.chunk, head.action_dim, head.variant)
    specs = part_specs(dims)
    modules = export_modules(policy, pre, prompt)
    parts = {}
    for name in PART_NAMES:
        started = time.perf_counter()
        external = export_part(modules[name], specs[name], stage / f"{name}.onnx")
        timings[f"export_{name}_s"] = round(time.perf_counter() - started, 2)
        parts[name] = PartEntry(specs[name], f"{name}.onnx", external)
        log.info("exported %s.onnx in %.1f s", name, timings[f"export_{name}_s"])
    return parts


def build_bundle(options: BuildOptions) -> BuildResult:
    options.validate()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mobile-vla-build-") as tmp:
        if options.checkpoint is None and options.random_weights:
            imported = random_policy(options)
            source: dict[str, Any] = {"checkpoint": f"random weights ({options.preset} preset)", "seed": options.seed}
        elif options.checkpoint is None:
            options = replace(options, preset="tiny")
            imported, fit = demo_policy(options, Path(tmp))
            source = {"checkpoint": "embedded demo (tiny preset, fitted to synthetic episodes)", "seed": options.seed,
                      "fit": fit.to_dict()}
        else:
            assert options.config is not None
            imported = import_checkpoint(options.checkpoint, options.config, options.kosmos_dir, options.preset)
            source = {"checkpoint": str(options.checkpoint)}
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
        with staged_bundle_dir(options.output) as stage:
            source["tokenizer"] = write_tokenizer(options, stage)
            prompt = prompt_settings(options, stage / TOKENIZER_FILE)
            parts = export_parts(imported.policy, pre, prompt, stage, timings)
            hashes = hash_files(stage, content_files(parts))  # once: the trunk alone is gigabytes at real size
            write_manifest(stage, make_manifest(imported, prompt, pre, parts, hashes, {}, source))
            parity = run_parity(imported.policy, stage, options)
            if not parity.passed:
                raise MobileVLAError(parity_failure(parity))  # before any report: nothing of this build is kept
            int8 = None
            if options.int8:
                data = calibration_data(options, imported)
                int8 = quantize_bundle(load_bundle(stage, verify_hashes=False),
                                       Int8Options(data, options.episode_color, options.sample, options.quant,
                                                   options.gate))
                parts = int8.parts
                timings["int8_s"] = int8.report["seconds"]
                hashes.update(hash_files(stage, [f for f in content_files(parts) if f not in hashes]))
            report = build_report(options, source, parity, timings, stage, parts)
            reports = write_reports(stage, report, int8)
            hashes.update(hash_files(stage, list(reports.values())))
            manifest = make_manifest(imported, prompt, pre, parts, hashes, reports, source)
            write_manifest(stage, replace(manifest, warnings=tuple(int8.warnings) if int8 else ()))
            if not options.engines:
                report["engines_skipped"] = "--no-engines"
            elif import_tensorrt() is None:
                report["engines_skipped"] = "TensorRT is not installed here"
            else:  # one part at a time, into the staged bundle: a failed engine build keeps the old bundle
                report["engines"] = build_bundle_engines(stage, options.workspace_mb, verify=False)
    return BuildResult(options.output, parity, report, int8)


def run_parity(policy: ReferencePolicy, stage: Path, options: BuildOptions) -> ParityReport:
    bundle = load_bundle(stage, verify_hashes=False)  # hashed a moment ago by this build
    manifest = bundle.manifest
    frames = [synthetic_frame(i, manifest.preprocessing) for i in range(options.parity_frames)]
    prompt_ids = PromptEncoder(bundle.path(TOKENIZER_FILE), manifest.prompt).prompt_ids(options.instruction)
    started = time.perf_counter()
    report = check_parity(policy, bundle, frames, prompt_ids, options.instruction, options.parity_tolerance)
    log.info("parity over %d frames in %.1f s: %s", options.parity_frames, time.perf_counter() - started,
             "passed" if report.passed else "FAILED")
    return report


def parity_failure(parity: ParityReport) -> str:
    failed = [f"{name} max abs err {p.stats.max_abs_err:.3g} > {p.tolerance:g}"
              for name, p in parity.parts.items() if not p.passed]
    return ("the exported parts do not reproduce the reference policy: " + "; ".join(failed)
            + ". No bundle was written. This is a bug in the export unless --parity-tolerance is set too tight; "
              "report it with the build log")


def file_size(stage: Path, *names: str | None) -> int:
    return sum((stage / name).stat().st_size for name in names if name)


def build_report(options: BuildOptions, source: dict[str, Any], parity: ParityReport, timings: dict[str, float],
                 stage: Path, parts: dict[str, PartEntry]) -> dict[str, Any]:
    sizes = {}
    for name, entry in parts.items():
        sizes[name] = file_size(stage, entry.onnx, entry.external_data)
        if entry.int8_onnx:
            sizes[f"{name}.int8"] = file_size(stage, entry.int8_onnx, entry.int8_external_data)
    return {
        "source": source,
        "layout": options.layout,
        "parity": parity.to_dict(),
        "timings": timings,
        "sizes_bytes": sizes,
        "host": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
        "instruction": options.instruction,
    }


def report_markdown(report: dict[str, Any]) -> str:
    parity = report["parity"]
    lines = [
        "# Build report",
        "",
        f"- source: {report['source']['checkpoint']}",
        f"- layout: {report['layout']} (a bundle setting: it cannot be read from the checkpoint)",
        f"- head variant: {parity['head_variant']}",
        f"- parity: {'PASSED' if parity['passed'] else 'FAILED'} over {parity['frames']} frames (FP32, ONNX Runtime "
        f"vs PyTorch reference)",
        "",
        "| part | max abs err | mean abs err | min cosine | tolerance | ok |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in parity["parts"].items():
        lines.append(f"| {name} | {p['max_abs_err']:.3g} | {p['mean_abs_err']:.3g} | {p['min_cosine']:.8f} | "
                     f"{p['tolerance']:g} | {'yes' if p['passed'] else 'NO'} |")
    lines += ["", "| part | size |", "|---|---|"]
    lines += [f"| {name} | {size / 1e6:.2f} MB |" for name, size in report["sizes_bytes"].items()]
    lines += ["", "Timings: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()), ""]
    return "\n".join(lines)


def write_reports(stage: Path, report: dict[str, Any], int8: Int8Result | None) -> dict[str, str]:
    (stage / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (stage / "build_report.md").write_text(report_markdown(report))
    reports = {"build": "build_report.json", "build_readable": "build_report.md"}
    if int8 is not None:
        (stage / "accuracy_report.json").write_text(json.dumps(int8.report, indent=2) + "\n")
        (stage / "accuracy_report.md").write_text(accuracy_markdown(int8.report))
        reports.update({"accuracy": "accuracy_report.json", "accuracy_readable": "accuracy_report.md"})
    return reports
