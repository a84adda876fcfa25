"""A team's own policy family in a file outside the package (`--policy FILE.py:Class`): the adapter interface alone
builds it, checks it and runs it; and the `--policy` / `--policy-option` refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from build_engines.adapters import load_adapter
from build_engines.cli import main as build_main
from build_engines.presets import TINY_VOCAB
from build_engines.tokenizer_gen import write_tiny_tokenizer
from runtime.backends.onnxruntime import onnx_backend
from runtime.bundle import load_bundle
from runtime.cli import main as runtime_main
from runtime.pipeline import PolicyPipeline
from runtime.sources.synthetic import synthetic_frame

# A small fresh family: conv + mean-pool + Linear per frame, an MLP head with tanh, 2-D velocities de-normalized to
# ±0.5. Nothing from the built-in families' modules: only the interface and the bundle types.
ADAPTER = '''
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from build_engines.adapters.base import ExportPart, PolicyAdapter
from build_engines.checkpoint import ImportedPolicy
from build_engines.presets import HeadConfig
from build_engines.training_config import default_training_config
from runtime.bundle import ActionSettings, PolicySettings
from runtime.errors import MobileVLAError
from runtime.preprocess import model_channel_indices, normalize_frame
from runtime.specs import ONNX_OPSET, PartSpec, TensorSpec

ACTION = ActionSettings(norm_action=True, norm_min=(-0.5,), norm_max=(0.5,))


class TinyNet(nn.Module):
    def __init__(self, chunk: int, width: int = 16) -> None:
        super().__init__()
        self.chunk, self.width = chunk, width
        self.conv = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.proj = nn.Linear(8, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, chunk * 2))
        self.eval()

    def feature(self, pixels: Tensor) -> Tensor:
        return self.proj(torch.relu(self.conv(pixels)).mean(dim=(2, 3)))

    def actions(self, feature: Tensor) -> Tensor:
        return torch.tanh(self.mlp(feature)).reshape(1, self.chunk, 2)


class Vision(nn.Module):
    def __init__(self, net: TinyNet, pre) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("channels", torch.tensor(model_channel_indices(pre), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(pre.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.image_std).view(1, 3, 1, 1))

    def forward(self, frame: Tensor) -> Tensor:
        pixels = frame.to(torch.float32).index_select(3, self.channels).permute(0, 3, 1, 2) / 255.0
        return self.net.feature((pixels - self.mean) / self.std)


class Head(nn.Module):
    def __init__(self, net: TinyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, feature: Tensor) -> Tensor:
        return self.net.actions(feature)


def described(net: TinyNet, checkpoint: Path | None = None) -> ImportedPolicy:
    head = HeadConfig(hidden_size=net.width, chunk=net.chunk, window=1)
    return ImportedPolicy(net.eval(), default_training_config(head, ACTION), checkpoint, 0, 0)


class Half(PolicyAdapter):  # abstract: not offered as a class to pick
    family = "half"


class MyPolicy(PolicyAdapter):
    family = "team-tiny"
    summary = "conv + mean-pool vision, MLP head, 2-D velocities"
    OPTIONS = {"chunk": "actions per chunk (default 3)"}

    def random_policy(self, preset, seed):
        torch.manual_seed(seed)
        return described(TinyNet(int(self.option("chunk", "3"))))

    def import_checkpoint(self, checkpoint, config, backbone_dir, preset):
        settings = json.loads(Path(config).read_text())
        net = TinyNet(int(settings["chunk"]), int(settings["width"]))
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        missing = sorted(set(net.state_dict()) ^ set(state))
        if missing:
            raise MobileVLAError(f"checkpoint {checkpoint}: keys {missing} differ from the team-tiny policy's")
        net.load_state_dict(state)
        return described(net, checkpoint)

    def write_checkpoint(self, imported, checkpoint, config, seed):
        net = imported.policy
        torch.save(net.state_dict(), checkpoint)
        Path(config).write_text(json.dumps({"chunk": net.chunk, "width": net.width, "seed": seed}))

    def vocab_size(self, model):
        return 1 << 20  # no text part: any tokenizer fits

    def policy_settings(self, model):
        return PolicySettings("velocities", model.chunk, 1, 2, 0, model.width, details={"conv": 8})

    def parts(self, model, pre, prompt):
        size, width = pre.image_size, model.width
        feature = TensorSpec("feature", "float32", (1, width))
        vision = PartSpec("vision", (TensorSpec("frame", "uint8", (1, size, size, pre.channels)),), (feature,),
                          ONNX_OPSET, 1e-4, "frame", (("frame", "frame"),))
        head = PartSpec("head", (feature,), (TensorSpec("actions", "float32", (1, model.chunk, 2)),), ONNX_OPSET,
                        1e-4, "frame", (("feature", "vision.feature"),))
        return [ExportPart(Vision(model, pre), vision), ExportPart(Head(model), head)]

    def reference(self, model, frames, prompt_ids, prompt, pre):
        steps = []
        for frame in frames:
            feature = model.feature(torch.from_numpy(normalize_frame(frame, pre)))
            steps.append({"vision.feature": feature, "head.actions": model.actions(feature)})
        return steps
'''

BUILTINS = "robovlms-lstm, robovlms-mlp, feature-fusion, clip-lstm, clip-mlp, ensemble"


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("team") / "my_adapter.py"
    path.write_text(ADAPTER)
    return path


@pytest.fixture(scope="module")
def team_bundle(adapter_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("team-bundle") / "bundle"
    code = build_main(["--policy", f"{adapter_file}:MyPolicy", "--random-weights", "--preset", "tiny",
                       "--output", str(out), "--no-engines", "--parity-frames", "4"])
    assert code == 0
    return out


def test_external_family_builds_with_parity(team_bundle: Path, adapter_file: Path) -> None:
    bundle = load_bundle(team_bundle)
    manifest = bundle.manifest
    assert manifest.policy.family == "team-tiny"
    assert (manifest.policy.chunk, manifest.policy.window, manifest.policy.action_dim) == (3, 1, 2)
    assert manifest.policy.details == {"conv": 8}
    assert manifest.source["policy"] == {"family": "team-tiny", "options": {}}
    assert [(n, e.spec.cadence) for n, e in manifest.parts.items()] == [("vision", "frame"), ("head", "frame")]
    assert dict(manifest.parts["head"].spec.sources) == {"feature": "vision.feature"}
    assert bundle.plan.instruction_parts == () and bundle.plan.window_link is None
    assert manifest.action.norm_min == (-0.5,) and manifest.action.norm_max == (0.5,)
    parity = json.loads((team_bundle / "build_report.json").read_text())["parity"]
    assert parity["passed"] and parity["family"] == "team-tiny" and parity["frames"] == 4
    assert set(parity["parts"]) == {"vision", "head", "end_to_end", "chunk0"}
    for name, part in parity["parts"].items():
        assert part["max_abs_err"] <= 1e-4 and part["samples"] == 4, name


def test_external_family_runs_in_the_runtime(team_bundle: Path) -> None:
    bundle = load_bundle(team_bundle)
    pre = bundle.manifest.preprocessing
    runs = []
    for _ in range(2):
        with onnx_backend(bundle) as backend:
            pipeline = PolicyPipeline(bundle, backend)
            results = [pipeline.step(synthetic_frame(t, pre)) for t in range(20)]
            assert backend.instruction_runs == 0
        runs.append(np.stack([r.chunk for r in results]))
        raw = np.stack([r.raw_chunk for r in results])
        assert [r.history_len for r in results] == [1] * 20
        np.testing.assert_allclose(runs[-1], raw * 0.5, atol=1e-7)  # de-normalized to ±0.5 from tanh
    assert runs[0].shape == (20, 3, 2) and np.isfinite(runs[0]).all() and np.abs(runs[0]).max() <= 0.5
    assert len(np.unique(runs[0][:, 0], axis=0)) > 1
    np.testing.assert_array_equal(runs[0], runs[1])


def test_external_family_benchmark_names_each_part(team_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert runtime_main(["--bundle", str(team_bundle), "--source", "synthetic", "--frames", "20", "--benchmark"]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    for stage in ("vision", "head", "total"):
        assert stage in rows, printed
        assert len(rows[stage]) == 4 and all(float(v) >= 0 for v in rows[stage]), rows[stage]
    assert "trunk" not in rows and "per instruction" not in printed
    assert "10 frames after 10 warm-up" in printed and "backend onnxruntime-cpu" in printed


def test_external_family_checkpoint_builds_through_its_import(adapter_file: Path, tmp_path: Path,
                                                              team_bundle: Path) -> None:
    policy = f"{adapter_file}:MyPolicy"
    adapter = load_adapter(policy)
    assert type(adapter).__name__ == "MyPolicy" and adapter.family == "team-tiny"
    checkpoint, config, tokenizer = tmp_path / "team.pt", tmp_path / "team.json", tmp_path / "tokenizer.json"
    adapter.write_checkpoint(adapter.random_policy("tiny", 0), checkpoint, config, 0)
    write_tiny_tokenizer(tokenizer, vocab_size=TINY_VOCAB)
    out = tmp_path / "b"
    assert build_main(["--policy", policy, "--checkpoint", str(checkpoint), "--config", str(config), "--tokenizer",
                       str(tokenizer), "--preset", "tiny", "--output", str(out), "--no-engines",
                       "--parity-frames", "4"]) == 0
    manifest = load_bundle(out).manifest
    assert manifest.policy.family == "team-tiny" and manifest.source["checkpoint"] == str(checkpoint)
    same = {}
    for path in (out, team_bundle):  # seed 0 both: the checkpoint's weights are the random build's
        bundle = load_bundle(path)
        with onnx_backend(bundle) as backend:
            pipeline = PolicyPipeline(bundle, backend)
            same[path] = np.stack([pipeline.step(synthetic_frame(t, bundle.manifest.preprocessing)).chunk
                                   for t in range(5)])
    np.testing.assert_array_equal(same[out], same[team_bundle])


def test_external_family_takes_its_own_options(adapter_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    policy = f"{adapter_file}:MyPolicy"
    out = tmp_path / "b"
    assert build_main(["--policy", policy, "--policy-option", "chunk=5", "--random-weights", "--preset", "tiny",
                       "--output", str(out), "--no-engines", "--parity-frames", "2"]) == 0
    manifest = load_bundle(out).manifest
    assert manifest.policy.chunk == 5 and manifest.parts["head"].spec.outputs[0].shape == (1, 5, 2)
    assert manifest.source["policy"]["options"] == {"chunk": "5"}
    capsys.readouterr()
    assert build_main(["--policy", policy, "--policy-option", "width=3", "--random-weights", "--output",
                       str(tmp_path / "c")]) == 2
    assert ("--policy-option width is not an option of the team-tiny family; its options: chunk (actions per chunk "
            "(default 3))") in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert build_main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("build_engines: error: ")]
    assert len(errors) == 1 and message in errors[0], err  # one line, no traceback
    assert "Traceback" not in err
    return errors[0]


def test_unknown_family_lists_the_builtin_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["--policy", "nope", "--random-weights", "--preset", "tiny", "--output", str(tmp_path / "b")],
            f"--policy 'nope' is not a built-in family ({BUILTINS}) or path/to/adapter.py:ClassName", capsys)
    refused(["--policy", "my_adapter.py", "--random-weights", "--output", str(tmp_path / "b")],
            "--policy 'my_adapter.py' is not a built-in family", capsys)  # a file without its class
    assert not (tmp_path / "b").exists()


def test_unknown_family_without_random_weights_lists_the_builtin_ones(capsys: pytest.CaptureFixture[str]) -> None:
    refused(["--policy", "robovlm-lstm"], f"--policy 'robovlm-lstm' is not a built-in family ({BUILTINS})", capsys)


def test_missing_adapter_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.py"
    refused(["--policy", f"{missing}:X", "--random-weights", "--output", str(tmp_path / "b")],
            f"--policy {missing}:X: {missing} does not exist; give the adapter's Python file and class", capsys)
    assert not (tmp_path / "b").exists()


def test_missing_class_lists_the_files_classes(adapter_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["--policy", f"{adapter_file}:NotThere", "--random-weights", "--output", str(tmp_path / "b")],
                  f"--policy {adapter_file}:NotThere: {adapter_file} has no concrete PolicyAdapter subclass "
                  f"'NotThere' (it has: MyPolicy); see docs/adapters.md", capsys)
    assert "Half" not in err  # abstract: not a class to pick
    refused(["--policy", f"{adapter_file}:Half", "--random-weights", "--output", str(tmp_path / "b")],
            "has no concrete PolicyAdapter subclass 'Half' (it has: MyPolicy)", capsys)
    refused(["--policy", f"{adapter_file}:TinyNet", "--random-weights", "--output", str(tmp_path / "b")],
            "has no concrete PolicyAdapter subclass 'TinyNet' (it has: MyPolicy)", capsys)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("item", ["novalue", "=0.5,0.5", " =1"])
def test_policy_option_must_be_key_value(item: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["--policy", "ensemble", "--policy-option", item, "--random-weights", "--output", str(tmp_path / "b")],
            f"--policy-option {item!r} is not KEY=VALUE (e.g. --policy-option weights=0.7,0.3)", capsys)
    assert not (tmp_path / "b").exists()


def test_builtin_family_options_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["--policy", "clip-mlp", "--policy-option", "weights=1,0", "--random-weights", "--output",
             str(tmp_path / "b")], "--policy-option weights is not an option of the clip-mlp family; its options: none",
            capsys)
    refused(["--policy", "ensemble", "--policy-option", "weights=a,b", "--random-weights", "--preset", "tiny",
             "--output", str(tmp_path / "b")],
            "--policy-option weights=a,b must be two non-negative numbers with a positive sum", capsys)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("family", ["clip-mlp", "feature-fusion", "ensemble", "robovlms-mlp"])
def test_demo_refuses_other_families(family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["--policy", family, "--output", str(tmp_path / "b")],
            f"the embedded demo is a robovlms-lstm policy; for --policy {family} pass --random-weights --preset tiny "
            f"--output DIR, or --checkpoint and --config", capsys)
    assert not (tmp_path / "b").exists()
