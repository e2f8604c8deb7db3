"""One device registry (huluexport/devices.py): `build`, `plan` and `bench` accept the same target names, and
every name gives both build ranges and a device to plan against."""

from __future__ import annotations

import click
import pytest

from huluexport import devices
from huluexport import plan as P
from huluexport.cli import cli, main
from huluexport.errors import ConfigError


def _target_choices(command: str) -> tuple[str, ...]:
    cmd = cli.commands[command]
    (opt,) = [p for p in cmd.params if p.name == "target"]
    assert isinstance(opt.type, click.Choice)
    return tuple(opt.type.choices)


def test_build_plan_and_bench_accept_the_same_names() -> None:
    assert _target_choices("build") == _target_choices("plan") == _target_choices("bench") == devices.NAMES
    # every device the planner knew before the registry was merged, and every build target
    for name in (
        "orin-nano",
        "orin-nx",
        "orin-agx",
        "thor",
        "rtx-4090",
        "h100",
        "h200",
        "cpu",
        "generic",
        "tiny",
    ):
        assert name in devices.NAMES


@pytest.mark.parametrize("name", devices.NAMES)
def test_every_name_has_ranges_and_a_device(name: str) -> None:
    t = devices.get_target(name)
    r = t.ranges()
    assert r["total_len"].max == t.max_context and r["n_frames"].max == t.max_frames
    dev = devices.device(name, bandwidth_bytes_s=10e9)  # host targets: no probe in a unit test
    assert dev.key == name and dev.bandwidth_bytes_s > 0
    assert dev.measured == (t.hardware is None)
    p = P.plan("tiny", dev, "fp32", search_volume=False)
    assert p.target == name and p.memory["total"] > 0


def test_unknown_target_is_one_line_from_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--target 'moon' is not a known target; expected one of generic"):
        devices.get_target("moon")
    for argv in (["build", "--size", "tiny", "--random-weights", "--out", "x"], ["plan"], ["bench", "."]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--target", "moon"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "'moon' is not one of" in err and "Traceback" not in err
