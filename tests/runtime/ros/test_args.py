"""`--ros-args` and ROS 2 name resolution (runtime/ros/): what `ros2 run` and launch files pass reaches the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cli import build_parser, effective_config
from runtime.errors import MobileVLAError
from runtime.ros.args import split_ros_args
from runtime.ros.names import RosNames


def test_names_resolve_as_a_ros_node_does() -> None:
    names = RosNames("vla", "/robot1", {"cmd_vel": "/base/cmd_vel", "/diagnostics": "/robot1/diagnostics"})
    assert names.resolve("cmd_vel", "t") == "/base/cmd_vel"  # remapped after expansion
    assert names.resolve("/robot1/cmd_vel", "t") == "/base/cmd_vel"  # same name, absolute
    assert names.resolve("mobile_vla/instruction", "t") == "/robot1/mobile_vla/instruction"
    assert names.resolve("~/status", "t") == "/robot1/vla/status"
    assert names.resolve("/diagnostics", "t") == "/robot1/diagnostics"
    assert RosNames().resolve("cmd_vel", "t") == "/cmd_vel"


def test_ros_args_split_from_the_runtimes_own_flags() -> None:
    own, ros = split_ros_args(["--source", "test", "--ros-args", "-r", "__ns:=/robot1", "-r", "cmd_vel:=drive",
                               "-p", "schedule.rate_hz:=5.0", "--param", "backend:=tensorrt", "--log-level", "warn",
                               "--", "--frames", "3"])
    assert own == ["--source", "test", "--frames", "3"]
    assert ros is not None and ros.namespace == "/robot1" and ros.remaps == {"cmd_vel": "drive"}
    assert ros.config_overrides() == {"schedule": {"rate_hz": 5.0}, "backend": "tensorrt",
                                      "ros2": {"namespace": "/robot1", "remaps": {"cmd_vel": "drive"}}}


def test_ros_args_set_the_config_under_the_flags(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    safety:\n      max_latency_s: 0.3\n    sinks: [dds]\n")
    own, ros = split_ros_args(["--rate-hz", "7", "--ros-args", "-r", "__node:=vla", "--params-file", str(params),
                               "-p", "schedule.rate_hz:=5", "-r", "vla:cmd_vel:=/other", "-r", "x:cmd_vel:=/no"])
    args = build_parser().parse_args(own)
    args.ros = ros
    config = effective_config(args)
    assert config.ros2.node_name == "vla" and config.ros2.remaps == {"cmd_vel": "/other"}  # x: is another node's
    assert config.safety.max_latency_s == 0.3 and config.sinks == ("dds",)
    assert config.schedule.rate_hz == 7.0  # the flag wins over -p
    assert config.ros2.names.resolve("cmd_vel", "t") == "/other"


@pytest.mark.parametrize(("argv", "message"), [
    (["--ros-args", "-r", "cmd_vel"], r"-r 'cmd_vel': expected NAME:=VALUE"),
    (["--ros-args", "-p"], r"-p needs a value"),
    (["--ros-args", "--enclave", "/x"], r"'--enclave' is not supported here; expected -r FROM:=TO"),
    (["--ros-args", "--log-level", "loud"], r"--log-level 'loud': expected one of debug"),
    (["--ros-args", "-r", "__ns:=robot1"], r"'robot1' is not a ROS 2 namespace; expected / or an absolute name"),
    (["--ros-args", "-p", "schedule.speed:=1"], r"unknown config key `schedule.speed`"),
    (["--ros-args", "-p", "schedule.rate_hz:=fast"], r"config key `schedule.rate_hz` has value 'fast'"),
])
def test_bad_ros_args_say_what_is_expected(argv: list[str], message: str) -> None:
    with pytest.raises(MobileVLAError, match=message):
        own, ros = split_ros_args(argv)
        args = build_parser().parse_args(own)
        args.ros = ros
        effective_config(args)


def test_a_bad_ros_argument_exits_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--ros-args", "--bogus"])
    assert stop.value.code == 2
    assert "'--bogus' is not supported here" in capsys.readouterr().err
