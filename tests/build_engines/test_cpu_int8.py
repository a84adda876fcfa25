"""The CPU INT8 forms (`<part>.cpu-int8.onnx`) on the demo: integer kernels, the shared accuracy gate, the speed
measurement, what the manifest records and what `--precision auto|int8` then runs."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from build_engines.cpu_int8 import CpuInt8Result, cpu_int8_bundle, measure_speed, with_cpu_int8
from build_engines.cpu_quantize import CpuInt8Settings
from build_engines.int8 import GateSettings, Int8Options, Int8Result
from build_engines.presets import kosmos_config
from build_engines.reports import append_markdown
from runtime.backends.onnx_forms import onnx_choice
from runtime.bundle import load_bundle
from runtime.bundle_write import hash_files, write_manifest
from runtime.cpu_int8 import CpuHost, cpu_host
from runtime.errors import MobileVLAError
from runtime.specs import PART_NAMES


@pytest.fixture(scope="module")
def cpu_forms(demo_bundle: Path, demo_episodes: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, CpuInt8Result]:
    """CPU INT8 forms written into a copy of the demo bundle, as the build's hook does after the Q/DQ gate."""
    root = tmp_path_factory.mktemp("cpu") / "bundle"
    shutil.copytree(demo_bundle, root)  # a freshly built demo bundle has them already: written over
    return root, cpu_int8_bundle(load_bundle(root, verify_hashes=False), Int8Options(demo_episodes))


@pytest.fixture(scope="module")
def unsigned_forms(cpu_forms: tuple[Path, CpuInt8Result], demo_bundle: Path, demo_episodes: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CpuInt8Result]:
    """uint8 weights, what a CPU without VNNI gets: `cpu_forms` already are on such a CPU."""
    if cpu_forms[1].report["weight_type"] == "uint8":
        return cpu_forms
    root = tmp_path_factory.mktemp("cpu-u8") / "bundle"
    shutil.copytree(demo_bundle, root)
    return root, cpu_int8_bundle(load_bundle(root, verify_hashes=False), Int8Options(demo_episodes),
                                 CpuInt8Settings(weight_type="uint8"))


def weight_types(path: Path) -> set[int]:
    """Element types of the quantized weights (`*_quantized` initializers) in a saved CPU INT8 form."""
    graph = onnx.load(str(path))
    return {t.data_type for t in graph.graph.initializer if t.name.endswith("_quantized")}


def test_cpu_forms_run_integer_kernels_and_pass_the_gate(cpu_forms: tuple[Path, CpuInt8Result]) -> None:
    root, result = cpu_forms
    report = result.report
    # uint8 weights exactly where this CPU's kernels would clip int8 ones (runtime/cpu_int8.py)
    assert report["weight_type"] == ("uint8" if cpu_host().saturates_int8 else "int8")
    assert report["tool"] == "onnxruntime.quantization.quantize_dynamic" and result.warnings == report["warnings"]
    for name in PART_NAMES:
        part = report["parts"][name]
        assert part["gate"]["passed"] and part["gate"]["cosine_mean"] >= 0.99 and part["kept"], name
        # ONNX Runtime's optimized graph keeps integer GEMMs (the Q/DQ graphs' dequantize-and-FP32 did not)
        assert part["integer_kernels"].get("DynamicQuantizeMatMul", 0) > 0, part["integer_kernels"]
        saved = Counter(n.op_type for n in onnx.load(str(root / f"{name}.cpu-int8.onnx")).graph.node)
        assert saved["MatMulInteger"] > 0 and saved["DynamicQuantizeLinear"] > 0
        assert "QuantizeLinear" not in saved  # not the TensorRT Q/DQ form
        unsigned = report["weight_type"] == "uint8"
        assert weight_types(root / f"{name}.cpu-int8.onnx") == {onnx.TensorProto.UINT8 if unsigned
                                                                 else onnx.TensorProto.INT8}
        speed = part["speed"]
        assert speed["runs"] >= 15 and speed["fp32_ms"] > 0 and speed["int8_ms"] > 0
        assert speed["host"] == cpu_host().to_dict() and speed["threads"] == 0
        form = result.parts[name].cpu_int8
        assert form is not None and form.onnx == f"{name}.cpu-int8.onnx" and form.speed is not None
        assert form.speed.speedup == pytest.approx(speed["speedup"], abs=1e-3)
    assert report["end_to_end"], "an end-to-end gate ran"
    for e2e in report["end_to_end"].values():
        assert e2e["passed"] and e2e["mae"] <= 0.02 and e2e["sign_agreement"] >= 0.98
    auto = [n for n in PART_NAMES if report["parts"][n]["auto"]]
    assert report["onnxruntime_precision"]["auto"] == {n: "cpu-int8" if n in auto else "fp32" for n in PART_NAMES}
    if auto:
        assert report["end_to_end"]["auto"]["int8_parts"] == auto


def test_uint8_weight_forms_pass_the_gate(unsigned_forms: tuple[Path, CpuInt8Result]) -> None:
    """u8×u8 kernels never clip: every CPU computes the integers this one did, so this gate holds on all of them."""
    root, result = unsigned_forms
    assert result.report["weight_type"] == "uint8" and result.warnings == []
    for name in PART_NAMES:
        form = result.parts[name].cpu_int8
        assert form is not None and form.weight_type == "uint8", name
        assert weight_types(root / form.onnx) == {onnx.TensorProto.UINT8}, name
    for e2e in result.report["end_to_end"].values():
        assert e2e["passed"] and e2e["mae"] <= 0.02 and e2e["sign_agreement"] >= 0.98
    assert "form: onnxruntime.quantization.quantize_dynamic, uint8 weights" in append_markdown_text(root, result)


def append_markdown_text(root: Path, result: CpuInt8Result) -> str:
    append_markdown(root / "accuracy_report.md", result.report)
    return (root / "accuracy_report.md").read_text()


def test_manifest_round_trip_and_what_the_runtime_runs(cpu_forms: tuple[Path, CpuInt8Result]) -> None:
    """The build hook's path: merged into the INT8 result, hashed, written, loaded; the runtime picks by it."""
    root, cpu = cpu_forms
    bundle = load_bundle(root, verify_hashes=False)
    accuracy = json.loads((root / "accuracy_report.json").read_text())
    merged = with_cpu_int8(Int8Result(dict(bundle.manifest.parts), list(bundle.manifest.warnings), accuracy), cpu)
    assert merged.report["cpu_int8"] is cpu.report and merged.warnings == list(bundle.manifest.warnings) + cpu.warnings
    assert "## CPU INT8 (ONNX Runtime)" in append_markdown_text(root, cpu)
    files = {**bundle.manifest.files, **hash_files(root, ["accuracy_report.md"])}
    for entry in merged.parts.values():
        assert entry.cpu_int8 is not None and entry.cpu_int8.weight_type == cpu.report["weight_type"]
        files.update(hash_files(root, entry.cpu_int8.files()))
    write_manifest(root, replace(bundle.manifest, parts=merged.parts, files=files))
    loaded = load_bundle(root)
    int8 = onnx_choice("int8", loaded)
    assert {c.form for c in int8.parts.values()} == {"cpu-int8"}
    auto = onnx_choice("auto", loaded)
    for name in PART_NAMES:
        speed = loaded.manifest.parts[name].cpu_int8.speed  # type: ignore[union-attr]
        assert auto.parts[name].form == ("cpu-int8" if speed.faster else "fp32"), (name, auto.parts[name].reason)


def test_strict_cosine_drops_the_failing_forms_with_warnings(demo_bundle: Path, demo_episodes: Path,
                                                             tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(demo_bundle, root)
    result = cpu_int8_bundle(load_bundle(root, verify_hashes=False),
                             Int8Options(demo_episodes, gate=GateSettings(cosine=0.9999999)))
    failed = [n for n, p in result.report["parts"].items() if not p["gate"]["passed"]]
    assert failed, result.report["parts"]
    for name in failed:
        assert result.parts[name].cpu_int8 is None and not (root / f"{name}.cpu-int8.onnx").exists()
        assert result.report["parts"][name]["dropped"] == "per-part gate"
        assert any(w.startswith(f"{name}: CPU INT8 cosine") and w.endswith("ONNX Runtime keeps FP32 for this part")
                   for w in result.warnings)


def test_gate_failure_stops_the_build_when_asked(demo_bundle: Path, demo_episodes: Path, tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(demo_bundle, root)
    options = Int8Options(demo_episodes, gate=GateSettings(cosine=0.9999999, on_failure="stop"))
    with pytest.raises(MobileVLAError, match=r"the CPU INT8 accuracy gate failed: .*--on-gate-failure fallback"):
        cpu_int8_bundle(load_bundle(root, verify_hashes=False), options)


class SleepRunner:
    """A runner whose run() takes `ms`: measure_speed's arithmetic without a model."""

    def __init__(self, ms: float) -> None:
        self.ms, self.threads, self.calls = ms, 0, 0
        self.inputs = {"x": np.zeros(1, dtype=np.float32)}

    def run(self) -> None:
        self.calls += 1
        time.sleep(self.ms / 1e3)


def test_speed_is_the_median_of_interleaved_runs() -> None:
    fp32, int8 = SleepRunner(4.0), SleepRunner(1.0)
    settings = CpuInt8Settings(timing_runs=9, timing_min_s=0.0, timing_warmup=1)
    speed = measure_speed(fp32, int8, [{"x": np.ones(1, dtype=np.float32)}], settings, cpu_host())  # type: ignore[arg-type]
    assert speed.runs == 9 and fp32.calls == int8.calls == 10
    assert 2.0 < speed.speedup < 4.5 and speed.faster
    assert fp32.inputs["x"][0] == 1.0  # the feed was copied in


def test_auto_weights_follow_the_build_cpu() -> None:
    clipping, vnni = CpuHost("AVX2-only", (), 2, "x86_64"), CpuHost("VNNI", ("avx512_vnni",), 2, "x86_64")
    arm = CpuHost("Cortex-A78AE", ("asimddp",), 6, "aarch64")
    assert [CpuInt8Settings().weights_on(h) for h in (clipping, vnni, arm)] == ["uint8", "int8", "int8"]
    assert CpuInt8Settings(weight_type="int8").weights_on(clipping) == "int8"  # asked for: no override
    assert CpuInt8Settings(weight_type="uint8").weights_on(vnni) == "uint8"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(MobileVLAError, match=r"CPU INT8 weight type"):
        CpuInt8Settings(weight_type="int4").validate()
    with pytest.raises(MobileVLAError, match=r"expected a subset of MatMul, Gemm, LSTM, Conv"):
        CpuInt8Settings(op_types=("Softmax",)).validate()


def test_mid_preset_has_kosmos_structure_and_vocabulary_at_mid_widths() -> None:
    mid, real = kosmos_config("mid"), kosmos_config("kosmos-2")
    text, vision = mid.text_config, mid.vision_config
    assert text.vocab_size == real.text_config.vocab_size == 65037
    assert (text.embed_dim, text.layers, text.ffn_dim) == (1024, 12, 4096)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size) == (512, 8, 2048)
    assert mid.latent_query_num == 64 and (vision.image_size, vision.patch_size) == (224, 14)
