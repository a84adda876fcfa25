"""`build_engines --plan`: the analytical count against the exported graphs, the device figures, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Kosmos2Config

from build_engines import presets
from build_engines.adapters.robovlms import RoboVLMsAdapter
from build_engines.build import MAX_PROMPT_TOKENS, BuildOptions, build_bundle, export_parts
from build_engines.cli import main as build_main
from build_engines.demo.fit import FitSettings
from build_engines.plan import command as plan_command
from build_engines.plan import estimate, make_plan
from build_engines.plan.devices import DEVICES, GIB, INT8_OPS_PER_TENSOR_CORE_CLOCK, ORIN_NX_16GB, Device
from build_engines.plan.estimate import part_bytes, part_floor
from build_engines.plan.graph import count_onnx_file, relative_difference
from build_engines.plan.model import (
    MLP_WIDTHS,
    PRESET_LSTM_HIDDEN,
    PRESET_NAMES,
    HeadDims,
    Op,
    PartCount,
    dims_from_config,
    part_counts,
    preset_dims,
)
from build_engines.plan.report import plan_dict, plan_text
from build_engines.presets import NUM_IMAGE_TOKENS, HeadConfig, kosmos_config, tiny_head, with_eager_attention
from build_engines.reference import MLP_WIDTHS as REFERENCE_MLP_WIDTHS
from build_engines.reference import ReferencePolicy
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.prompt import PROMPT_TEMPLATE, PromptSettings
from runtime.specs import PART_NAMES

AGREEMENT = 0.05  # the bound: the plan's FLOPs within 5% of the graph's


def export_and_count(policy: ReferencePolicy, layout: str, max_prompt_tokens: int, out: Path) -> dict[str, int]:
    """Export the three parts with the build's own export code, then count each graph's FLOPs."""
    prompt = PromptSettings(layout, PROMPT_TEMPLATE, "go", max_prompt_tokens, NUM_IMAGE_TOKENS, 0, 2, 1)
    export_parts(RoboVLMsAdapter(), policy, Preprocessing(), prompt, out, {})
    return {name: count_onnx_file(out / f"{name}.onnx").flops for name in PART_NAMES}


def head_dims(config: HeadConfig) -> HeadDims:
    return HeadDims.of(config.hidden_size, config.variant, config.chunk, config.action_dim, config.window,
                       config.num_layers)


def assert_agree(analytic: dict[str, PartCount], graph: dict[str, int]) -> None:
    for name in PART_NAMES:
        difference = relative_difference(analytic[name].flops, graph[name])
        print(f"{name}: analytic {analytic[name].flops} FLOPs, graph {graph[name]} FLOPs, difference {difference:.3%}")
        assert difference <= AGREEMENT, (name, analytic[name].flops, graph[name])


@pytest.mark.parametrize(("layout", "variant", "max_prompt_tokens"),
                         [("robovlms", "velocities", 32), ("mobilevla_fallback", "actions_gripper", 80)])
def test_flops_match_the_exported_tiny_graphs(tmp_path: Path, layout: str, variant: str,
                                              max_prompt_tokens: int) -> None:
    torch.manual_seed(0)
    head = tiny_head(variant)
    graph = export_and_count(ReferencePolicy(kosmos_config("tiny"), head), layout, max_prompt_tokens, tmp_path)
    dims = preset_dims("tiny", layout, max_prompt_tokens, head_dims(head))
    assert_agree(part_counts(dims), graph)


@pytest.mark.slow
def test_flops_match_an_exported_graph_at_real_widths(tmp_path: Path) -> None:
    """Kosmos-2's widths, heads and sequence lengths with one layer per tower (~30 s, 2 GB): what differs from the
    tiny preset besides the layer count, which the count multiplies."""
    config = with_eager_attention(Kosmos2Config(
        text_config=dict(vocab_size=1000, layers=1, dropout=0.0, attention_dropout=0.0),
        vision_config=dict(num_hidden_layers=1), latent_query_num=NUM_IMAGE_TOKENS))
    torch.manual_seed(0)
    graph = export_and_count(ReferencePolicy(config, HeadConfig()), "robovlms", 32, tmp_path)
    assert_agree(part_counts(dims_from_config(config, head_dims(HeadConfig()), "robovlms", 32)), graph)


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_preset_shapes_are_the_presets_configs(preset: str) -> None:
    """The plan keeps its own copy of the presets' shapes (to run without transformers): they must not drift."""
    config = kosmos_config(preset)
    head = HeadDims.of(PRESET_LSTM_HIDDEN[preset], "velocities")
    assert preset_dims(preset, "robovlms", 32, head) == dims_from_config(config, head, "robovlms", 32, preset)


def test_constants_shared_with_modules_that_import_torch() -> None:
    assert PRESET_NAMES == presets.PRESETS
    assert MLP_WIDTHS == REFERENCE_MLP_WIDTHS
    assert plan_command.MAX_PROMPT_TOKENS == MAX_PROMPT_TOKENS
    assert PRESET_LSTM_HIDDEN["tiny"] == tiny_head().hidden_size
    # adapters/robovlms.py RoboVLMsAdapter.head: tiny_head() for tiny, else the Mobile VLA head HeadConfig()
    assert PRESET_LSTM_HIDDEN["mid"] == PRESET_LSTM_HIDDEN["kosmos-2"] == HeadConfig().hidden_size


def test_kosmos2_weights_match_the_measured_fp32_onnx_sizes() -> None:
    """docs/measurements.md: the real-size FP32 ONNX files are vision 1.27 GB, trunk 5.37 GB, head 51 MB."""
    counts = part_counts(preset_dims("kosmos-2"))
    measured = {"vision": 1.27e9, "trunk": 5.37e9, "head": 51e6}
    for name, size in measured.items():
        assert part_bytes(counts[name], "fp32").weights == pytest.approx(size, rel=0.02), name
    trunk = counts["trunk"]
    assert trunk.parameters == pytest.approx(1.3425e9, rel=1e-3)
    # The embedding table is in the engine but a frame reads only the sequence's rows.
    fp16 = part_bytes(trunk, "fp16")
    assert fp16.weights - fp16.weights_read == (65037 - 99) * 2048 * 2
    assert part_bytes(trunk, "int8").weights < 0.6 * fp16.weights


def test_device_figures_follow_from_their_sources() -> None:
    nano, nx, agx = DEVICES
    for device in DEVICES:  # 1024 dense INT8 ops per tensor core and clock; FP16 at half that
        assert device.int8_tops * 1e12 == pytest.approx(
            device.tensor_cores * INT8_OPS_PER_TENSOR_CORE_CLOCK * device.gpu_mhz * 1e6, rel=0.025), device.name
        assert device.fp16_tflops == pytest.approx(device.int8_tops / 2, rel=0.01)
    assert nano.int8_tops == 20.0  # data sheet: "20 (Dense) INT8 TOPs"
    assert 2 * agx.int8_tops == 170.0  # technical brief: "170 sparse INT8 TOPs" for the GPU
    assert nx.int8_tops < 50 / 1.5  # the data sheet's 50 dense TOPS include the two DLAs
    assert nx.bandwidth_gbs * 1e9 == 3200e6 * 2 * 16  # LPDDR5 at 3200 MHz, 128 bits
    assert nano.bandwidth_gbs * 1e9 == pytest.approx(2133e6 * 2 * 16, rel=0.01)
    assert agx.bandwidth_gbs == 2 * nx.bandwidth_gbs  # 256 bits at the same clock


def test_floor_is_the_larger_bound_and_int8_splits_the_flops() -> None:
    device = Device("d", "D", 8, bandwidth_gbs=100, int8_tops=20, fp16_tflops=10, tensor_cores=1, gpu_mhz=1,
                    sources=())
    part = PartCount("p", (Op("q", flops=10**12, quantized=10**9), Op("attn", flops=10**12)))
    fp16 = part_floor(part, "fp16", device)
    assert fp16.compute_ms == pytest.approx(200.0) and fp16.memory_ms == pytest.approx(20.0)  # 2e9 B at 100 GB/s
    assert fp16.ms == fp16.compute_ms and fp16.bound == "compute"
    int8 = part_floor(part, "int8", device)
    assert int8.compute_ms == pytest.approx(50.0 + 100.0) and int8.memory_ms == pytest.approx(10.0)
    memory_bound = PartCount("m", (Op("gemv", flops=2 * 10**9, quantized=10**9),))
    assert part_floor(memory_bound, "fp16", device).bound == "memory"


def test_kosmos2_plan_prints_per_device_predictions_fast_without_torch(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    code = ("import sys; from build_engines.cli import main; rc = main(['--plan', '--preset', 'kosmos-2', '--json', "
            f"{str(out)!r}]); heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 20  # seconds, not the minutes of a build
    text = result.stdout
    for device in DEVICES:
        assert f"| {device.name} |" in text
    assert "frame fp16 | frame int8" in text and "trunk 24x2048 over 99 tokens" in text
    data = json.loads(out.read_text())
    assert data["parts"]["trunk"]["flops"] == part_counts(preset_dims("kosmos-2"))["trunk"].flops
    assert set(data["parts"]["vision"]["bytes"]) == {"fp32", "fp16", "int8"}
    nx = data["devices"]["orin-nx-16gb"]
    assert nx["floor_ms"]["fp16"]["trunk"]["bound"] == "memory"
    assert nx["floor_ms"]["int8"]["frame"]["ms"] < nx["floor_ms"]["fp16"]["frame"]["ms"]
    assert nx["sources"] and nx["bandwidth_gbs"] == 102.4


def test_kosmos2_trunk_floor_is_its_weights_over_the_bandwidth() -> None:
    """docs/design.md §4: on the Orin NX the FP16 trunk (~2.6 GB with its table) reads ~100 GB/s: ≈ 26 ms."""
    plan = make_plan(preset_dims("kosmos-2"))
    nx = next(dp for dp in plan.devices if dp.device is ORIN_NX_16GB)
    trunk = nx.floors["fp16"]["trunk"]
    assert trunk.bound == "memory" and 20 < trunk.ms < 27
    assert nx.floors["int8"]["trunk"].ms == pytest.approx(trunk.ms / 2, rel=0.05)


def test_memory_that_does_not_fit_warns_with_a_remedy() -> None:
    plan = make_plan(preset_dims("kosmos-2"))
    by_key = {dp.device.key: dp for dp in plan.devices}
    nx, nano, agx = by_key["orin-nx-16gb"], by_key["orin-nano-8gb"], by_key["agx-orin-64gb"]
    assert not agx.warnings
    assert nx.run["fp16"].fits and not nx.build["fp16_from_fp32_onnx"][1].fits
    warning = next(w for w in nx.warnings if "FP32 ONNX" in w)
    assert "trunk" in warning and "--workspace-mb" in warning and "NAME.fp16.onnx" in warning
    capped = make_plan(preset_dims("kosmos-2"), workspace_mb=1024)
    assert next(dp for dp in capped.devices if dp.device is ORIN_NX_16GB).build["fp16_from_fp32_onnx"][1].fits
    assert not nano.run["fp16"].fits and nano.run["int8"].fits
    assert any("run the INT8 engines" in w for w in nano.warnings)
    text = plan_text(plan)
    assert "Warnings:" in text and "tied to its device model" in text


def test_workspace_flag_caps_the_build_estimate() -> None:
    default = make_plan(preset_dims("kosmos-2")).devices[1].build["fp16_from_fp16_onnx"][1]
    capped = make_plan(preset_dims("kosmos-2"), workspace_mb=512).devices[1].build["fp16_from_fp16_onnx"][1]
    assert capped.detail["workspace"] == 512 << 20
    assert default.need_bytes - capped.need_bytes == default.detail["workspace"] - (512 << 20)
    assert default.detail["workspace"] == pytest.approx(0.5 * default.usable_bytes, rel=1e-6)
    assert default.usable_bytes < 16 * GIB


def test_plan_of_a_bundle_counts_its_graphs_and_is_in_its_build_report(tmp_path: Path, demo_episodes: Path) -> None:
    result = build_bundle(BuildOptions(output=tmp_path / "b", episodes=demo_episodes, fit=FitSettings(steps=0),
                                       parity_frames=8, engines=False))
    report = json.loads((result.bundle / "build_report.json").read_text())
    assert report["plan"]["model"]["sequence_length"] == 99 and report["plan"]["model"]["preset"] == "tiny"
    assert set(report["plan"]["devices"]) == {d.key for d in DEVICES}
    assert "## Performance plan" in (result.bundle / "build_report.md").read_text()
    out = tmp_path / "plan.json"
    assert build_main(["--plan", "--bundle", str(result.bundle), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for name in PART_NAMES:
        part = data["parts"][name]
        assert part["graph_relative_difference"] <= AGREEMENT, (name, part)
        assert part["flops"] == report["plan"]["parts"][name]["flops"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--plan", "--preset", "kosmos-3"], "unknown preset 'kosmos-3'; expected one of tiny, mid, kosmos-2"),
    (["--plan", "--layout", "upstream"], "unknown layout 'upstream'; expected one of robovlms, mobilevla_fallback"),
    (["--plan", "--max-prompt-tokens", "0"], "--max-prompt-tokens 0 is out of range: it must be >= 1"),
    (["--plan", "--workspace-mb", "0"], "--workspace-mb 0 is out of range: it must be >= 1"),
    (["--json", "plan.json"], "--json FILE writes the performance plan: it needs --plan"),
])
def test_bad_plan_flags_are_refused_with_a_message(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert build_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_json_into_a_missing_directory_or_onto_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_main(["--plan", "--json", str(tmp_path / "no" / "plan.json")]) == 2
    assert f"the directory {tmp_path / 'no'} does not exist; create it first" in capsys.readouterr().err
    assert build_main(["--plan", "--json", str(tmp_path)]) == 2
    assert "is a directory; pass the path of the JSON file to write" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_bundle_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_main(["--plan", "--bundle", str(tmp_path / "missing")]) == 2
    assert "is not a directory; pass a bundle written by build_engines" in capsys.readouterr().err
    assert build_main(["--plan", "--bundle", str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{not json")
    assert build_main(["--plan", "--bundle", str(tmp_path)]) == 2
    assert "is not readable JSON" in capsys.readouterr().err


def test_graph_counter_refuses_a_damaged_or_missing_graph(tmp_path: Path) -> None:
    damaged = tmp_path / "trunk.onnx"
    damaged.write_bytes(b"not\x00an onnx graph")
    with pytest.raises(MobileVLAError, match=r"is not a readable ONNX graph \(.*\); rebuild the bundle"):
        count_onnx_file(damaged)
    with pytest.raises(MobileVLAError, match=r"head\.onnx is missing: the bundle's manifest lists it"):
        count_onnx_file(tmp_path / "head.onnx")


def test_plan_json_has_flops_and_bytes_per_part_and_floor_per_device() -> None:
    data = plan_dict(make_plan(preset_dims("tiny")))
    assert data["plan_version"] == 1 and data["assumptions"]
    for name in PART_NAMES:
        part = data["parts"][name]
        assert part["flops"] > 0 and part["bytes"]["fp16"]["weights"] > part["bytes"]["int8"]["weights"]
    for device in data["devices"].values():
        for precision in ("fp16", "int8"):
            assert set(device["floor_ms"][precision]) == {*PART_NAMES, "frame"}
        assert set(device["memory"]["build"]) == set(estimate.BUILD_FORMS)
