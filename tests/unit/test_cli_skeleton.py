"""The CLI skeleton: help, version, and user errors as one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

from huluexport import __version__


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "huluexport.cli", *args], capture_output=True, text=True)


def test_help_and_version() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    assert "Hulu-Med" in out.stdout
    out = _run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_command_exits_nonzero_without_traceback() -> None:
    out = _run("no-such-command")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr


def test_engines_target_names_a_device_profile() -> None:
    """`huluexport engines --target NAME` stands for the profile's limits as hulurt.engines options (the
    registry is huluexport/devices.py); an unknown name is one line and exit 2."""
    from hulurt.engines.__main__ import build_parser

    from huluexport.commands.engines import target_args
    from huluexport.devices import TARGETS

    t = TARGETS["orin-nano"]
    ns = build_parser().parse_args(["/bundle", *target_args("orin-nano")])
    assert (ns.label, ns.max_context, ns.max_frames, ns.max_groups) == (t.name, t.max_context, t.max_frames,
                                                                        t.max_groups)
    out = _run("engines", "--target", "no-such-device", "/bundle")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--target 'no-such-device'" in out.stderr and "orin-nano" in out.stderr
