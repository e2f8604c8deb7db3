"""What a failed `huluexport` command printed on stderr, without its progress lines.

When stderr is not a terminal, a phase that runs over a second prints plain progress lines
(`[    1.2 s] load the exporter (torch, onnx) ...`, huluexport/progress.py), so a slow machine can show one or two
before the error. Tests of "one line naming the file" check the error itself: `error_lines` drops exactly those
progress lines and nothing else, so a traceback or a second message still fails them."""

from __future__ import annotations

import re

PROGRESS = re.compile(r"^\[\s*\d+\.\d s\] ")


def error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not PROGRESS.match(line)]


def error_text(err: str) -> str:
    """`err` without progress lines, newline-terminated as the CLI wrote it."""
    return "".join(line + "\n" for line in error_lines(err))
