"""tests/stderr_lines.py drops the plain progress lines huluexport really prints, and nothing else."""

from __future__ import annotations

import io

from stderr_lines import error_lines, error_text

from huluexport import progress


def test_drops_only_real_progress_lines() -> None:
    buf = io.StringIO()
    plain = progress._Plain(file=buf)  # the reporter stderr gets when it is not a terminal
    plain._line("load the exporter (torch, onnx) ...")
    plain._line("load the exporter (torch, onnx): done in 3.1 s (CPU 2.9 s)")
    printed = buf.getvalue()
    assert printed.count("\n") == 2 and printed.startswith("[")
    err = printed + "error: --out b: already exists\n"
    assert error_lines(err) == ["error: --out b: already exists"]
    assert error_text(err) == "error: --out b: already exists\n"
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\nerror: boom\n"
    assert error_lines(printed + tb) == tb.strip().splitlines()  # a traceback is never hidden
