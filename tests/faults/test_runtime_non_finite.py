"""Fault injection, non-finite values: a policy whose output is NaN (NaN weights in the head, as an FP16 overflow on
the device would give) must be zeroed with reason `non_finite_output` in every schedule mode, and non-finite or
out-of-range settings must be refused before anything runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main
from tests.udp import drain

onnx = pytest.importorskip("onnx")
numpy_helper = pytest.importorskip("onnx.numpy_helper")


@pytest.fixture(scope="module")
def nan_bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle with the FP32 head's last bias set to NaN (its manifest hash updated, so it loads verified)."""
    bundle = tmp_path_factory.mktemp("nan") / "bundle"
    shutil.copytree(demo_bundle, bundle)
    model = onnx.load(str(bundle / "head.onnx"))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    for tensor in floats:
        tensor.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(tensor), np.nan), tensor.name))
    onnx.save(model, str(bundle / "head.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["head.onnx"] = hashlib.sha256((bundle / "head.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("schedule", ["chunk0", "ensemble", "async"])
def test_nan_policy_output_is_zeroed_with_its_reason(schedule: str, nan_bundle: Path, udp_receiver: socket.socket,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    # async publishes at --rate-hz from a control thread: at the default 30 Hz the demo's 12 frames can all be done
    # (unpaced synthetic source, a fast CPU) before its second tick, which would then see no chunk at all
    paced = ["--rate-hz", "1000", "--frames", "40"] if schedule == "async" else ["--frames", "12"]
    code = main(["--bundle", str(nan_bundle), "--precision", "fp32", "--schedule", schedule, *paced,
                 "--sink", f"udp:127.0.0.1:{udp_receiver.getsockname()[1]}", "--control", "none"])
    assert code == 0
    messages = drain(udp_receiver)
    assert messages and all(m["stop"] for m in messages)
    assert all(m["linear"] == [0.0, 0.0, 0.0] for m in messages)  # valid JSON, never NaN on the wire
    reasons = {m["reason"] for m in messages}
    assert "non_finite_output" in reasons and reasons <= {"non_finite_output", "shutdown", "stale frame"}
    assert "zero velocity: non_finite_output" in caplog.text
    assert "non_finite_output" in caplog.text.split("stopped:")[-1]  # counted in the run's summary


def test_benchmark_report_counts_non_finite_outputs(nan_bundle: Path, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    assert main(["--bundle", str(nan_bundle), "--precision", "fp32", "--benchmark", "--frames", "8", "--warmup", "2",
                 "--json", str(report)]) == 0
    assert json.loads(report.read_text())["zero_commands"]["non_finite_output"] == 8


@pytest.mark.parametrize(("argv", "message"), [
    (["--output-scale", "inf"], "config key `safety.scale` has value inf; allowed: a finite number > 0 <= 10"),
    (["--output-scale", "nan"], "config key `safety.scale` has value nan; allowed: a finite number > 0 <= 10"),
    (["--output-scale", "50"], "config key `safety.scale` has value 50.0; allowed: a finite number > 0 <= 10"),
    (["--output-limit", "inf"], "config key `safety.limit` has value inf; allowed: a finite number > 0 <= 10"),
    (["--rate-hz", "nan"], "config key `schedule.rate_hz` has value nan"),
])
def test_non_finite_flags_are_refused_with_the_key(argv: list[str], message: str, demo_bundle: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bundle", str(demo_bundle), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--frames", "-5"], "argument --frames: -5 is out of range; expected 1 to"),
    (["--frames", "0"], "argument --frames: 0 is out of range; expected 1 to"),
    (["--warmup", "-5"], "argument --warmup: -5 is out of range; expected 0 to"),
    (["--frames", "ten"], "argument --frames: 'ten' is not a whole number"),
])
def test_bad_counts_are_usage_errors(argv: list[str], message: str, demo_bundle: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--bundle", str(demo_bundle), *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("safety: {frame_deadline_s: .inf}\n",
     "config key `safety.frame_deadline_s` has value inf; allowed: a finite number > 0 <= 5"),
    ("safety: {max_latency_s: .nan}\n", "config key `safety.max_latency_s` has value nan"),
    ("safety: {max_velocity: {linear_x: .inf}}\n", "config key `safety.max_velocity.linear_x` has value inf"),
    ("safety: {max_accel: {linear_x: 1000}}\n",
     "config key `safety.max_accel.linear_x` has value 1000; allowed: a finite number > 0 <= 100"),
    ("source: {stall_timeout_s: .inf}\n", "config key `source.stall_timeout_s` has value inf"),
    ("source: {backoff_s: 4, backoff_max_s: 1}\n",
     "config key `source.backoff_max_s` has value 1.0; allowed: at least source.backoff_s (4)"),
    ("safety:\n  frame_deadline_s: 0.25\n  frame_deadline_s: 3\n",
     "the key 'frame_deadline_s' is given twice (first at line 2); keep one"),
])
def test_bad_config_files_are_refused_with_the_key(yaml_text: str, message: str, demo_bundle: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_text(yaml_text)
    assert main(["--config", str(config), "--bundle", str(demo_bundle)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_non_utf8_config_is_refused(demo_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_bytes(b"instruction: {text: \"gehe zur T\xfcr\"}\n")  # Latin-1, not UTF-8
    assert main(["--config", str(config), "--bundle", str(demo_bundle)]) == 2
    assert f"config file {config} is not UTF-8 text (byte 31: invalid start byte); save it as UTF-8 YAML" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("flag", "target", "message"), [
    ("--json", "missing-dir/bench.json", "--json {tmp}/missing-dir/bench.json: directory {tmp}/missing-dir does not "
                                         "exist; create it first or write elsewhere"),
    ("--plot", "", "--plot {tmp} is a directory; give a file path"),
    ("--output", "missing-dir/records.jsonl", "--output {tmp}/missing-dir/records.jsonl: directory "
                                              "{tmp}/missing-dir does not exist"),
])
def test_unwritable_outputs_are_refused_before_the_run(flag: str, target: str, message: str, demo_bundle: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       udp_receiver: socket.socket) -> None:
    path = tmp_path / target if target else tmp_path
    argv = ["--bundle", str(demo_bundle), flag, str(path), "--sink", f"udp:127.0.0.1:{udp_receiver.getsockname()[1]}"]
    if flag != "--output":
        argv.append("--benchmark")
    assert main(argv) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert drain(udp_receiver, 0.2) == []  # refused before a single frame ran
