from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from runtime.cli import main


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_runs_and_prints_velocity_json_lines(demo_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bundle", str(demo_bundle), "--frames", "12", "--instruction", "turn left", "--output", "-",
                 "--sink", "none"]) == 0
    records = json_lines(capsys.readouterr().out)
    assert len(records) == 12
    first = records[0]
    assert first["frame"] == 0 and first["instruction"] == "turn left"
    chunk = np.array(first["chunk"])
    assert chunk.shape == (10, 2)
    assert first["velocity"] == first["chunk"][0]
    assert [r["history"] for r in records] == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8]
    # demo normalization is ±1.15 around tanh outputs
    assert np.abs(np.array([r["chunk"] for r in records])).max() <= 1.15


def test_output_scale_and_limit_flags(demo_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--bundle", str(demo_bundle), "--frames", "2", "--output", "-", "--sink", "none"])
    plain = np.array([r["chunk"] for r in json_lines(capsys.readouterr().out)])
    main(["--bundle", str(demo_bundle), "--frames", "2", "--output-scale", "2.0", "--output-limit", "0.05",
          "--output", "-", "--sink", "none"])
    scaled = np.array([r["chunk"] for r in json_lines(capsys.readouterr().out)])
    np.testing.assert_allclose(scaled, np.clip(plain * 2.0, -0.05, 0.05), atol=2e-6)


def test_benchmark_prints_table_and_writes_json(demo_bundle: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--bundle", str(demo_bundle), "--benchmark", "--frames", "25", "--warmup", "5",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "FPS" in printed and not json_lines(printed)
    report = json.loads(out.read_text())
    assert report["frames"] == 20 and report["warmup"] == 5
    for stage in ("vision", "trunk", "head", "total"):
        stats = report["stages_ms"][stage]
        assert 0 < stats["p50"] <= stats["p99"] <= stats["max"]
    assert report["stages_ms"]["total"]["p50"] >= report["stages_ms"]["vision"]["p50"]
    assert report["fps"] > 0


def write_episode(path: Path, frames: int, instruction: str | None) -> np.ndarray:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (frames, 72, 128, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.attrs["episode_name"] = path.stem
        f.attrs["num_frames"] = frames
        f.create_dataset("images", data=images)
        f.create_dataset("actions", data=rng.uniform(-1, 1, (frames, 3)).astype(np.float32))
        if instruction:
            f.create_dataset("language_instruction", data=instruction)
    return images


def test_h5_replay_resets_history_per_episode_and_reads_instruction(
    demo_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_episode(tmp_path / "episode_20250808_123136_1box_vert_left.h5", 3, "go left")
    write_episode(tmp_path / "episode_20250808_124000_1box_vert_right.h5", 2, None)
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{tmp_path}", "--output", "-", "--sink", "none"]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [(r["frame"], r["history"]) for r in records] == [(0, 1), (1, 2), (2, 3), (0, 1), (1, 2)]
    assert records[0]["instruction"] == "go left"
    assert records[3]["instruction"] == "navigate around the box to the left"  # bundle default
    assert len(records[0]["recorded_action"]) == 2  # the policy's action_dim: [linear_x, linear_y]


def test_user_errors_exit_nonzero_with_message(demo_bundle: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bundle", str(tmp_path / "missing")]) == 2
    assert "runtime: error: bundle directory" in capsys.readouterr().err
    assert main(["--bundle", str(demo_bundle), "--source", "camera0"]) == 2
    assert "unknown source 'camera0'; expected `csi[:SENSOR_ID]` (or `csi://N`), `v4l2:/dev/videoN`" in \
        capsys.readouterr().err
    assert main(["--bundle", str(demo_bundle), "--instruction", "go " * 100, "--frames", "1"]) == 2
    assert "--max-prompt-tokens" in capsys.readouterr().err
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{tmp_path}"]) == 2
    assert "holds no .h5/.hdf5 episode files" in capsys.readouterr().err


def test_runtime_imports_no_heavy_packages() -> None:
    code = (
        "import sys, runtime, runtime.cli, runtime.pipeline, runtime.sources.dispatch\n"
        "import runtime.sources.gstreamer.capture\n"
        "import runtime.backends.onnxruntime, runtime.backends.select\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnx_graphsurgeon') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_score_prints_fp32_and_int8_side_by_side(demo_bundle: Path, demo_episodes: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scores.json"
    assert main(["--bundle", str(demo_bundle), "--source", f"h5:{demo_episodes}", "--score", "--frames", "72",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("metric"))
    assert header.split()[1:] == ["fp32", "int8"]
    for row in ("MAE", "acc@0.3 all axes", "acc@0.15 all axes", "linear_x R²", "linear_y Pearson r",
                "linear_y direction"):
        assert row in printed
    scores = json.loads(out.read_text())
    assert scores["fp32"]["frames"] == scores["int8"]["frames"] == 72
    assert abs(scores["fp32"]["mae"] - scores["int8"]["mae"]) < 0.02  # the gate's bound, end to end
    assert scores["fp32"]["axes"]["linear_x"]["pearson"] > 0.3  # the fitted demo follows the scene


def test_score_and_precision_errors(demo_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bundle", str(demo_bundle), "--score"]) == 2
    assert "--score needs recorded actions: use --source h5:DIR" in capsys.readouterr().err
    assert main(["--bundle", str(demo_bundle), "--score", "--benchmark", "--source", "h5:x"]) == 2
    assert "--score and --benchmark are separate runs" in capsys.readouterr().err


def test_benchmark_steady_state_keeps_no_memory(demo_bundle: Path, tmp_path: Path) -> None:
    """Issue 4: tracemalloc growth under 64 KB over 1,000 frames after warm-up (synthetic source, no sinks)."""
    out = tmp_path / "bench.json"
    assert main(["--bundle", str(demo_bundle), "--benchmark", "--frames", "1010", "--warmup", "10", "--alloc-check",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 1000 and 0 <= report["alloc_growth_kb"] < 64
    for stage in ("capture_wait", "frame_copy", "schedule", "publish", "host", "latency"):
        assert report["stages_ms"][stage]["p50"] <= report["stages_ms"][stage]["p90"] <= \
            report["stages_ms"][stage]["p99"] <= report["stages_ms"][stage]["max"]
    assert report["monitor"]["source"] == "proc" and report["zero_commands"] == {"shutdown": 1}


def test_listen_prints_what_a_udp_sink_sends(demo_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import threading
    import time

    from runtime.listen import listen

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    received: list[int] = []
    thread = threading.Thread(target=lambda: received.append(listen(f"udp:127.0.0.1:{port}", None, 1.5)))
    thread.start()
    while "listening" not in capsys.readouterr().out and thread.is_alive():
        time.sleep(0.01)
    assert main(["--bundle", str(demo_bundle), "--frames", "3", "--sink", f"udp:127.0.0.1:{port}",
                 "--control", "none"]) == 0
    thread.join(timeout=10)
    # 3 commands and the final zero; the sink's mailbox keeps the newest, so on a fast run the zero can replace
    # every command its worker had not sent yet: what always arrives, last, is the zero
    assert received and 1 <= received[0] <= 4
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("seq ") and "stop True shutdown" in lines[-2]
    assert lines[-1] == "no datagram for 1.5 s; stopping"


def printed_source(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    assert main([*flags, "--print-config"]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out[out.index("\n") + 1 :])["source"]  # past the "# effective config" line


def test_jetson_utils_input_flags_map_to_the_source_config(capsys: pytest.CaptureFixture[str]) -> None:
    csi = printed_source(capsys, "--source", "csi://0", "--input-width", "1920", "--input-rate", "60",
                         "--input-flip", "none")
    assert csi["sensor_mode"] == [1920, 720] and csi["fps"] == 60
    assert csi["flip_method"] == 2  # jetson-utils turns a CSI camera's `none` into rotate-180 (and back)
    assert printed_source(capsys, "--source", "csi:0", "--input-flip", "rotate-180")["flip_method"] == 0
    usb = printed_source(capsys, "--source", "/dev/video0", "--input-flip", "none", "--input-height", "480")
    assert usb["flip_method"] == 0 and usb["sensor_mode"] == [1280, 480]
    assert printed_source(capsys, "--source", "v4l2:/dev/video0", "--input-flip", "clockwise")["flip_method"] == 3


def test_bad_input_flags_are_refused_with_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--input-width", "0", "--print-config"]) == 2
    assert "config key `source.sensor_mode` has value 0; allowed: an integer >= 1 <= 10000" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input-flip", "upside-down", "--print-config"])
    assert "invalid choice: 'upside-down'" in capsys.readouterr().err
