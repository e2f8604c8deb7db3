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
