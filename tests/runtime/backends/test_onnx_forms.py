"""Which graph each part runs on ONNX Runtime (`--precision auto|int8|fp32`), from the bundle's CPU INT8 forms and
their recorded speed; old bundles; missing files. Runs in the lean venv: the CPU INT8 "forms" here are copies of
the FP32 graphs (the choice reads only the manifest; the runners prove the chosen file is what runs)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.backends.onnx_forms import onnx_choice, onnx_precision, open_onnx_backend
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.backends.select import open_backend
from runtime.bundle import load_bundle, sha256_file
from runtime.config import RuntimeConfig
from runtime.cpu_int8 import CpuHost, cpu_host
from runtime.errors import MobileVLAError
from runtime.specs import PART_NAMES


def speed(speedup: float, host: CpuHost | None = None, threads: int = 0) -> dict[str, Any]:
    host = host or cpu_host()
    return {"fp32_ms": 10.0 * speedup, "int8_ms": 10.0, "speedup": speedup, "runs": 15, "threads": threads,
            "host": host.to_dict(), "measured": "2026-12-02T00:00:00+00:00"}


def write_forms(root: Path, forms: dict[str, dict[str, Any] | str | None], weight_type: str = "uint8") -> None:
    """Give parts a CPU INT8 form (a copy of the FP32 graph) with `speed` (a dict, None for no measurement, or
    "none" for no form at all) and drop any forms the bundle had. uint8 weights unless told: exact on any CPU, so
    the choice does not depend on the one the tests run on."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    for name, entry in data["parts"].items():
        old = entry.pop("cpu_int8", None)
        if old:
            data["files"].pop(old["onnx"], None)
            (root / old["onnx"]).unlink(missing_ok=True)
        wanted = forms.get(name, "none")
        if wanted == "none":
            continue
        onnx = f"{name}.cpu-int8.onnx"
        shutil.copyfile(root / entry["onnx"], root / onnx)
        data["files"][onnx] = sha256_file(root / onnx)
        entry["cpu_int8"] = {"onnx": onnx, "external_data": None, "speed": wanted, "weight_type": weight_type}
    path.write_text(json.dumps(data))


@pytest.fixture
def bundle_copy(demo_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(demo_bundle, target)
    return target


def open_and_step(config: RuntimeConfig, root: Path) -> OnnxRuntimeBackend:
    backend = open_backend(config, load_bundle(root))
    assert isinstance(backend, OnnxRuntimeBackend)
    with backend:
        backend.frame[...] = 128
        assert np.isfinite(backend.step().actions).all()
    return backend


def test_auto_runs_the_cpu_int8_form_only_where_measured_faster(bundle_copy: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    write_forms(bundle_copy, {"vision": speed(2.0), "trunk": speed(0.8), "head": None})
    with caplog.at_level(logging.INFO, logger="runtime"):
        backend = open_and_step(RuntimeConfig(backend="onnxruntime"), bundle_copy)
    assert backend.runners["vision"].path == bundle_copy / "vision.cpu-int8.onnx"
    assert backend.runners["trunk"].path == bundle_copy / "trunk.onnx"
    assert backend.runners["head"].path == bundle_copy / "head.onnx"
    assert backend.name == "onnxruntime-cpu (auto: vision cpu-int8, trunk fp32, head fp32)"
    log = caplog.text
    assert "onnxruntime vision: cpu-int8 (its CPU INT8 form is faster by the bundle's measurement: 10.0 ms vs " \
           "FP32 20.0 ms = 2.00x" in log
    assert "onnxruntime trunk: fp32 (its CPU INT8 form is not faster than FP32 by the bundle's measurement: " \
           "10.0 ms vs FP32 8.0 ms = 0.80x" in log and "(needs 1.05x)" in log
    assert "onnxruntime head: fp32 (the bundle records no speed measurement for head.cpu-int8.onnx)" in log
    assert onnx_precision("auto", load_bundle(bundle_copy)) == "int8"


def test_auto_with_every_form_slower_is_fp32(bundle_copy: Path) -> None:
    write_forms(bundle_copy, {name: speed(1.01) for name in PART_NAMES})  # within the noise margin: not faster
    choice = onnx_choice("auto", load_bundle(bundle_copy))
    assert {c.form for c in choice.parts.values()} == {"fp32"} and choice.precision == "fp32"
    assert choice.label == "auto: fp32"


def test_old_bundle_without_cpu_forms_runs_fp32_under_auto(bundle_copy: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    write_forms(bundle_copy, {})  # as bundles were built before CPU INT8 forms: Q/DQ graphs only
    assert load_bundle(bundle_copy).manifest.has_int8
    with caplog.at_level(logging.INFO, logger="runtime"):
        backend = open_and_step(RuntimeConfig(backend="onnxruntime"), bundle_copy)
    assert all(runner.path.name == f"{name}.onnx" for name, runner in backend.runners.items())
    assert "onnxruntime trunk: fp32 (the bundle has no CPU INT8 form, only the TensorRT Q/DQ graph, which ONNX " \
           "Runtime runs slower than FP32 (rebuild the bundle with `build_engines --int8`" in caplog.text
    assert backend.name == "onnxruntime-cpu (auto: fp32)"


def test_int8_runs_cpu_forms_else_qdq_with_warnings(bundle_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_forms(bundle_copy, {"vision": speed(0.9), "trunk": speed(3.0)})
    with caplog.at_level(logging.INFO, logger="runtime"):
        backend = open_and_step(RuntimeConfig(backend="onnxruntime", precision="int8"), bundle_copy)
    assert backend.runners["vision"].path.name == "vision.cpu-int8.onnx"
    assert backend.runners["trunk"].path.name == "trunk.cpu-int8.onnx"
    assert backend.runners["head"].path.name == "head.int8.onnx"  # the demo's Q/DQ head passed its gate
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("vision: --precision int8 runs its CPU INT8 form, which the bundle measured no faster "
                            "than FP32 (0.90x)") for w in warnings)
    assert any(w.startswith("head: ONNX Runtime runs the TensorRT Q/DQ graph head.int8.onnx, slower than FP32 on "
                            "the CPU") for w in warnings)
    assert not any(w.startswith("trunk") for w in warnings)


def test_measurement_from_another_cpu_or_thread_count_is_logged(bundle_copy: Path) -> None:
    other = CpuHost("Some Other CPU", (), 64)
    write_forms(bundle_copy, {"trunk": speed(2.0, host=other, threads=4)})
    trunk = onnx_choice("auto", load_bundle(bundle_copy), threads=2).parts["trunk"]
    assert trunk.form == "cpu-int8"  # the bundle's measurement decides; the difference is said, not acted on
    assert trunk.warning is not None and "measured on Some Other CPU (64 CPUs; no integer dot-product" in trunk.warning
    assert "measured with threads=4, this run has threads=2" in trunk.warning


CLIPPING = CpuHost("AVX2-only CPU", (), 2, "x86_64")  # u8×s8 kernels without VNNI: int8 weights clip


@pytest.mark.parametrize(("host", "clips"), [
    (CLIPPING, True),
    (CpuHost("VNNI CPU", ("avx512_vnni",), 2, "x86_64"), False),
    (CpuHost("AVX-VNNI CPU", ("avx_vnni",), 2, "AMD64"), False),
    (CpuHost("Cortex-A78AE", ("asimddp",), 6, "aarch64"), False),
    (CpuHost("old Arm core", (), 4, "aarch64"), False),  # Arm's kernels widen to 32 bits: nothing clips
    (CpuHost("unrecorded", (), 2, ""), False),  # a host read from a bundle written before `machine` was recorded
])
def test_which_cpus_clip_8_bit_weights(host: CpuHost, clips: bool) -> None:
    assert host.saturates_int8 is clips
    assert CpuHost.from_dict(host.to_dict()) == host


def test_int8_weights_on_a_clipping_cpu_run_fp32_under_auto(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr("runtime.backends.onnx_forms.cpu_host", lambda: CLIPPING)
    write_forms(bundle_copy, {"vision": speed(2.0, host=CLIPPING), "trunk": speed(2.0, host=CLIPPING)},
                weight_type="int8")
    bundle = load_bundle(bundle_copy)
    auto = onnx_choice("auto", bundle).parts
    for name in ("vision", "trunk"):
        assert auto[name].form == "fp32" and auto[name].warning is not None
        assert auto[name].warning.startswith(f"{name}: --precision auto runs FP32: {name}.cpu-int8.onnx has "
                                             f"int8 weights and this CPU (AVX2-only CPU")
        assert "rebuild the bundle with `build_engines --int8` on a CPU like this one" in auto[name].warning
    int8 = onnx_choice("int8", bundle).parts["trunk"]
    assert int8.form == "cpu-int8" and int8.warning is not None
    assert int8.warning.startswith("trunk: --precision int8 runs its CPU INT8 form although trunk.cpu-int8.onnx "
                                   "has int8 weights")
    write_forms(bundle_copy, {"trunk": speed(2.0, host=CLIPPING)}, weight_type="uint8")
    unsigned = onnx_choice("auto", load_bundle(bundle_copy)).parts["trunk"]
    assert unsigned.form == "cpu-int8" and unsigned.warning is None


def test_unknown_weight_type_in_the_manifest_is_refused(bundle_copy: Path) -> None:
    write_forms(bundle_copy, {"trunk": speed(2.0)}, weight_type="int4")
    with pytest.raises(MobileVLAError, match=r"CPU INT8 weight type 'int4': expected int8 or uint8"):
        load_bundle(bundle_copy)


def test_fp32_and_fp16_requests(bundle_copy: Path) -> None:
    write_forms(bundle_copy, {"trunk": speed(2.0)})
    bundle = load_bundle(bundle_copy)
    assert {c.form for c in onnx_choice("fp32", bundle).parts.values()} == {"fp32"}
    with pytest.raises(MobileVLAError, match=r"--precision fp16 runs on TensorRT only"):
        onnx_choice("fp16", bundle)
    backend = open_and_step(RuntimeConfig(backend="onnxruntime", precision="fp32"), bundle_copy)
    assert backend.name == "onnxruntime-cpu (fp32)"


def test_int8_without_any_int8_graph_is_refused(bundle_copy: Path) -> None:
    write_forms(bundle_copy, {})
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["parts"].values():
        entry["precision"] = "fp16"
    path.write_text(json.dumps(data))
    with pytest.raises(MobileVLAError, match=r"has no INT8 parts; build it with `build_engines --int8`"):
        onnx_choice("int8", load_bundle(bundle_copy))


def test_missing_cpu_int8_file_is_refused_with_the_fix(bundle_copy: Path) -> None:
    write_forms(bundle_copy, {"trunk": speed(2.0)})
    bundle = load_bundle(bundle_copy)
    (bundle_copy / "trunk.cpu-int8.onnx").unlink()
    with pytest.raises(MobileVLAError, match=r"incomplete: trunk.cpu-int8.onnx is missing.*rebuild"):
        load_bundle(bundle_copy)
    with pytest.raises(MobileVLAError, match=r"trunk's CPU INT8 form trunk.cpu-int8.onnx is missing .*"
                                             r"--precision fp32 runs without it"):
        open_onnx_backend("auto", bundle)  # loaded before the file went


def test_malformed_speed_measurement_is_refused(bundle_copy: Path) -> None:
    write_forms(bundle_copy, {"trunk": {**speed(2.0), "int8_ms": -1.0}})
    with pytest.raises(MobileVLAError, match=r"malformed entry .*CPU speed measurement out of range"):
        load_bundle(bundle_copy)


def test_cpu_host_reads_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx512f avx512_vnni\n")
    assert cpu_host(x86).model == "AMD EPYC 9B14" and cpu_host(x86).int8_flags == ("avx512_vnni",)
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd42\n")
    host = cpu_host(arm)
    assert host.model.endswith("(CPU part 0xd42)") and host.int8_flags == ("asimddp",)
    assert cpu_host(tmp_path / "absent").model  # no /proc: still names the machine
