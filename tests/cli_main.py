"""Run `huluexport` in the test's process, as the console script would, and return what it printed."""

from __future__ import annotations

import pytest

from huluexport.cli import main


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `huluexport ARGS`; a command that returns without SystemExit counts as 0."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err
