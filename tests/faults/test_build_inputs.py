"""build_engines refuses bad checkpoints, training configs and tokenizers, through the real CLI, naming the tensor or
the key, before anything is written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from build_engines.cli import main as build_main
from build_engines.demo.checkpoint_writer import write_robovlms_checkpoint
from build_engines.demo.policy import demo_reference_policy
from build_engines.presets import TINY_VOCAB
from build_engines.tokenizer_gen import write_tiny_tokenizer
from build_engines.training_config import write_training_config
from runtime.bundle import ActionSettings
from tests.build_engines.test_checkpoint import edit_config

ACTION = ActionSettings(norm_action=True, norm_min=(-1.0, -0.5), norm_max=(1.0, 0.5))


@dataclass(frozen=True)
class Run:
    """A training run's directory as a user has it: checkpoint, config, tokenizer and a log."""

    directory: Path
    checkpoint: Path
    config: Path
    tokenizer: Path
    log: Path

    def argv(self, output: Path, *extra: str, checkpoint: Path | None = None, config: Path | None = None,
             tokenizer: Path | None = None) -> list[str]:
        """A fast tiny-preset checkpoint build (2 parity frames), the way a user types it."""
        return ["--checkpoint", str(checkpoint or self.checkpoint), "--config", str(config or self.config),
                "--tokenizer", str(tokenizer or self.tokenizer), "--preset", "tiny", "--output", str(output),
                "--parity-frames", "2", *extra]


def write_run(directory: Path) -> Run:
    directory.mkdir(parents=True, exist_ok=True)
    policy = demo_reference_policy(seed=0, variant="velocities")
    run = Run(directory, directory / "x.ckpt", directory / "x.json", directory / "tokenizer.json",
              directory / "train.log")
    write_robovlms_checkpoint(policy, run.checkpoint)
    write_training_config(run.config, policy.head_config, 4, 8.0, ACTION)
    write_tiny_tokenizer(run.tokenizer, vocab_size=TINY_VOCAB)
    run.log.write_text("epoch 9 loss 0.012\n")
    return run


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect a user error (exit 2, one `build_engines: error:` line), return its message."""
    assert build_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("build_engines: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return write_run(tmp_path_factory.mktemp("run1"))


def saved_state(run: Run, target: Path, key: str, value: float) -> Path:
    state = torch.load(run.checkpoint, weights_only=True)["state_dict"]
    name = next(k for k in state if k.endswith(key))
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    torch.save({"state_dict": state}, target)
    return target


@pytest.mark.parametrize(("key", "value", "words"), [
    ("model.act_head.rnn.weight_hh_l0", math.nan, "model.act_head.rnn.weight_hh_l0 (1 NaN, 0 inf of"),
    ("q_proj.lora_A.default.weight", math.inf, ".q_proj.lora_A.default.weight (0 NaN, 1 inf of"),
])
def test_non_finite_weights_are_refused_naming_the_tensor(run: Run, tmp_path: Path, key: str, value: float,
                                                          words: str, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = saved_state(run, tmp_path / "diverged.ckpt", key, value)
    message = refused(run.argv(tmp_path / "out", checkpoint=checkpoint), capsys)
    assert "has tensors with NaN or infinite values: 1 (first: " in message and words in message
    assert "use an earlier checkpoint of the run" in message
    assert not (tmp_path / "out").exists()


def test_empty_checkpoint_file(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "cut.ckpt"
    empty.write_bytes(b"")
    message = refused(run.argv(tmp_path / "out", checkpoint=empty), capsys)
    assert f"checkpoint {empty} is empty (0 bytes)" in message and "Copy the checkpoint again" in message


def test_json_named_ckpt_is_not_reported_as_pickled_code(run: Run, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    message = refused(run.argv(tmp_path / "out", checkpoint=run.config), capsys)
    assert "is not a PyTorch checkpoint: it is a JSON file (the training config? it goes to --config)" in message
    assert "pickled code" not in message


@pytest.mark.parametrize(("change", "words"), [
    ({"window_size": "eight"}, "`window_size` must be an integer in [1, 64], got 'eight'"),
    ({"window_size": 0}, "`window_size` must be an integer in [1, 64], got 0"),
    ({"fwd_pred_next_n": True}, "`fwd_pred_next_n` must be an integer in [1, 64], got True"),
    ({"act_head__action_dim": 2.5}, "`act_head.action_dim` must be an integer in [1, 16], got 2.5"),
    ({"act_head__hidden_size": "64"}, "`act_head.hidden_size` must be an integer in [1, 65536], got '64'"),
    ({"train_setup__lora_r": 0}, "`train_setup.lora_r` must be an integer in [1, 4096], got 0"),
    ({"train_setup__lora_alpha": -8}, "`train_setup.lora_alpha` must be a finite number > 0, got -8"),
    ({"train_setup__lora_enable": "yes"}, "`train_setup.lora_enable` must be true or false, got 'yes'"),
    ({"train_setup": "lora"}, "`train_setup` must be a JSON object, got 'lora'"),
    ({"norm_action": 1}, "`norm_action` must be true or false, got 1"),
    ({"norm_max": math.nan}, "`norm_max` must be a finite number, got nan"),
    ({"norm_min": [-1.0, -math.inf]}, "`norm_min[1]` must be a finite number, got -inf"),
    ({"norm_min": []}, "`norm_min` must be a number or a non-empty list of numbers, got []"),
    ({"norm_min": [1.0, 0.5], "norm_max": [-1.0, -0.5]},
     "norm_min[0] = 1.0 is not below norm_max[0] = -1.0 (axis 0; swapped bounds flip the sign"),
    ({"norm_min": 0.5, "norm_max": 0.5}, "norm_min[0] = 0.5 is not below norm_max[0] = 0.5"),
    ({"norm_min": [-1.0, -1.0, -1.0]}, "norm_min has 3 values: it must have 1 or action_dim = 2"),
    ({"norm_max": 1e9}, "norm_max[0] = 1000000000.0: it must be <= 1000"),
    ({"image_std": [0, 0, 0]}, "image_std[0] = 0.0: it must be > 0"),
    ({"image_mean": [123.7, 116.3, 103.5]}, "image_mean[0] = 123.7: it must be <= 1"),
    ({"image_std": [0.2, math.nan, 0.2]}, "`image_std[1]` must be a finite number, got nan"),
    ({"image_std": "clip"}, "`image_std` must be a list of 3 numbers, got 'clip'"),
    ({"image_size": 336}, "`image_size` must be 224 (Kosmos-2's vision input), got 336"),
    ({"train_dataset": {"data_dir": 5}}, "`train_dataset.data_dir` must be a directory path (a string), got 5"),
])
def test_bad_training_config_values_are_refused_naming_the_key(run: Run, tmp_path: Path, change: dict[str, Any],
                                                                words: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = edit_config(run.config, tmp_path / "bad.json", **change)
    message = refused(run.argv(tmp_path / "out", config=config), capsys)
    assert f"training config {config}" in message and words in message, message
    assert "Fix" in message
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_an_object(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "list.json"
    config.write_text("[1, 2]")
    message = refused(run.argv(tmp_path / "out", config=config), capsys)
    assert f"training config {config} must hold a JSON object, got a list" in message


def test_checkpoint_build_without_a_tokenizer_is_refused(run: Run, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = run.argv(tmp_path / "out")
    del argv[argv.index("--tokenizer"):argv.index("--tokenizer") + 2]
    message = refused(argv, capsys)
    assert "--checkpoint needs the tokenizer the policy was trained with: pass --kosmos-dir DIR" in message
    assert "or --tokenizer FILE" in message and "mean nothing to the trained weights" in message
    assert not (tmp_path / "out").exists()


def test_unusable_tokenizers_are_refused(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "none.json"
    assert f"--tokenizer {absent} does not exist" in refused(run.argv(tmp_path / "out", tokenizer=absent), capsys)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{}")
    message = refused(run.argv(tmp_path / "out", tokenizer=garbage), capsys)
    assert f"tokenizer {garbage} is not a readable tokenizer.json" in message
    kosmos = tmp_path / "kosmos"
    kosmos.mkdir()
    argv = run.argv(tmp_path / "out", "--kosmos-dir", str(kosmos))
    del argv[argv.index("--tokenizer"):argv.index("--tokenizer") + 2]
    assert f"Kosmos-2 directory {kosmos} has no tokenizer.json" in refused(argv, capsys)
    assert not (tmp_path / "out").exists()


def test_demo_build_refuses_a_tokenizer(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = refused(["--tokenizer", str(run.tokenizer), "--output", str(tmp_path / "out")], capsys)
    assert "--tokenizer needs --checkpoint (or --random-weights)" in message
