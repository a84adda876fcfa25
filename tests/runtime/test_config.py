from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import RuntimeConfig, config_as_dict, parse_config, with_section
from runtime.config_file import load_config
from runtime.errors import MobileVLAError


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runtime.config_file.SYSTEM_CONFIG", tmp_path / "absent.yaml")
    config = load_config(None)
    assert config == RuntimeConfig()
    assert config.schedule.mode == "chunk0" and config.sinks == ("stdout",)
    assert config.origin == "built-in defaults"


def test_system_config_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "runtime.yaml"
    system.write_text("schedule: {mode: ensemble, ensemble_decay: 0.2}\nsinks: [udp:127.0.0.1:9000]\n")
    monkeypatch.setattr("runtime.config_file.SYSTEM_CONFIG", system)
    config = load_config(None)
    assert config.schedule.mode == "ensemble" and config.schedule.ensemble_decay == 0.2
    assert config.sinks == ("udp:127.0.0.1:9000",) and config.origin == str(system)


def test_full_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""
bundle: ~/bundle
backend: onnxruntime
precision: int8
source: {spec: "csi:1", sensor_mode: [1920, 1080], fps: 60, flip_method: 2}
instruction: {text: go to the box, over_long: truncate, control: udp, udp_port: 6000}
schedule: {mode: async, rate_hz: 50, step_s: 0.05}
safety:
  max_velocity: {linear_x: 0.5, linear_y: 0.3}
  max_accel: {linear_x: 1.0}
  frame_deadline_s: 0.2
monitor: {guard_available_mb: 500, warn_available_mb: 900}
""")
    c = load_config(path)
    assert c.bundle == Path("~/bundle").expanduser() and c.precision == "int8"
    assert c.source.sensor_mode == (1920, 1080) and c.source.fps == 60 and c.source.flip_method == 2
    assert c.instruction.text == "go to the box" and c.instruction.udp_port == 6000
    assert c.schedule.rate_hz == 50 and c.safety.max_velocity == {"linear_x": 0.5, "linear_y": 0.3}
    assert c.monitor.guard_available_mb == 500


@pytest.mark.parametrize(("text", "message"), [
    ("backend: cuda", "config key `backend` has value 'cuda'; allowed: auto | tensorrt | onnxruntime"),
    ("schedule: {mode: fast}", "config key `schedule.mode` has value 'fast'; allowed: chunk0 | ensemble | async"),
    ("schedule: {rate_hz: 0}", "config key `schedule.rate_hz` has value 0; allowed: a finite number >= 1 <= 1000"),
    ("safety: {max_velocity: {linear_z: 1}}",
     "config key `safety.max_velocity.linear_z` has value 'linear_z'; allowed: linear_x | linear_y | angular_z"),
    ("safety: {max_accel: {linear_x: -1}}",
     "config key `safety.max_accel.linear_x` has value -1; allowed: a finite number > 0"),
    ("safety: {frame_deadline_s: fast}", "`safety.frame_deadline_s` has value 'fast'; allowed: a finite number > 0"),
    ("source: {fps: 30.5}", "config key `source.fps` has value 30.5; allowed: an integer >= 1 <= 240"),
    ("source: {sensor_mode: 1280}", "`source.sensor_mode` has value 1280; allowed: [width, height] in pixels"),
    ("source: {file_sync: maybe}", "`source.file_sync` has value 'maybe'; allowed: true or false"),
    ("instruction: {udp_port: 70000}", "`instruction.udp_port` has value 70000; allowed: an integer >= 1 <= 65535"),
    ("instruction: {text: ''}", "`instruction.text` has value ''; allowed: a non-empty string or null"),
    ("monitor: {guard_available_mb: 2000}", "allowed: at most monitor.warn_available_mb (1024)"),
    ("sinks: [udp, 3]", "config key `sinks` has value ['udp', 3]; allowed: a list of sink specs"),
    ("shedule: {mode: async}", "unknown config key `shedule`; allowed keys: bundle, backend, precision"),
    ("safety: {max_speed: 1}", "unknown config key `safety.max_speed`; allowed keys in safety: scale, limit"),
    ("safety: 3", "config key `safety` has value 3; allowed: a mapping with keys scale, limit"),
    ("- a\n- b", "the config must be a YAML mapping of settings, got list"),
])
def test_errors_name_key_value_and_allowed(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MobileVLAError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(MobileVLAError, match=r"cannot read config file .*missing\.yaml.*--config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: {mode: [\n")
    with pytest.raises(MobileVLAError, match="is not valid YAML"):
        load_config(bad)


def test_flag_overrides_replace_only_given_keys() -> None:
    config = parse_config({"schedule": {"mode": "ensemble", "ensemble_decay": 0.3}}, "test")
    changed = with_section(config, "schedule", mode="async", rate_hz=None)
    assert changed.schedule.mode == "async" and changed.schedule.ensemble_decay == 0.3
    assert with_section(config, "schedule", mode=None) is config


def test_flags_are_validated_like_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    assert main(["--rate-hz", "0", "--print-config"]) == 2
    assert "config key `schedule.rate_hz` has value 0.0; allowed: a finite number >= 1 <= 1000" in \
        capsys.readouterr().err
    assert main(["--output-limit", "-1", "--print-config"]) == 2
    assert "config key `safety.limit` has value -1.0; allowed: a finite number > 0" in capsys.readouterr().err


def test_printed_config_reads_back_to_the_same_config() -> None:
    import yaml

    config = parse_config({"source": {"spec": "csi:1", "sensor_mode": [1920, 1080]}, "sinks": ["udp:127.0.0.1:5600"],
                           "safety": {"max_velocity": {"linear_x": 0.5}}, "bundle": "/tmp/b"}, "test")
    text = yaml.safe_dump(config_as_dict(config), sort_keys=False)
    assert parse_config(yaml.safe_load(text), "test") == config
