"""What a person sees from `huluexport build` (docs/cli.md, "Progress"): plain lines when stderr is not a terminal,
with nothing from third-party libraries between them (-q: tests/export/test_cli_input_errors.py); on a terminal,
the live display shows the first phase before torch has even been imported, and the summary at the end. Real
tiny builds in a subprocess (random weights: no checkpoint needed)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BUILD = ("build", "--size", "tiny", "--random-weights", "--target", "tiny")
# a plain line: "[   12.3 s] <phase> ..." / "... : done in ..." / "...: <amount> of <total>, <rate>, <left>"
PLAIN = re.compile(r"^\[\s*\d+\.\d s\] \S.*$")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "huluexport.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_plain_lines_and_summary_when_piped_and_no_third_party_noise(tmp_path: Path) -> None:
    out = _cli(*BUILD, "--out", str(tmp_path / "b"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"bundle: {tmp_path / 'b'}"  # results only on stdout
    lines = out.stderr.splitlines()
    head = next(i for i, ln in enumerate(lines) if re.match(r"^\d+ phases in ", ln))
    live, summary = lines[:head], lines[head + 1:]
    # every line before the summary is one of ours: no torchvision / torch.onnx / onnxscript warnings, no
    # "[torch.onnx] Obtain model graph ..." lines
    assert all(PLAIN.match(ln) for ln in live), [ln for ln in live if not PLAIN.match(ln)]
    for name in ("load the exporter (torch, onnx)", "vision: trace", "decoder: trace"):  # seconds each
        assert any(ln.endswith(f"] {name} ...") for ln in live), name
        assert any(f"] {name}: done in " in ln for ln in live), name
    names = [ln[2:].split("  ")[0] for ln in summary]  # "  <name>  <wall> s  CPU <cpu> s  [<amount>  <rate>]"
    for name in ("load the exporter (torch, onnx)", "plan weights", "model on the meta device", "vision: trace",
                 "decoder: fold_constants", "decoder: save", "manifest"):
        assert name in names, name
    save = next(ln for ln in summary if ln.startswith("  decoder: save "))
    assert re.search(r"\d+\.\d\d s  CPU +\d+\.\d\d s  \d+\.\d\d [kMG]?B  \d+\.\d MB/s$", save), save
    assert all(ln.startswith("  ") for ln in summary)


def test_terminal_shows_a_phase_at_once_and_the_summary_at_the_end(tmp_path: Path) -> None:
    """Run the build on a pseudo-terminal and time its output. The display must be up while the first phase
    (importing torch and the exporter, seconds) still runs: its first bytes come before that phase's ✓ line.
    That ordering holds however loaded the machine is; the absolute bound (idle: well under a second; the
    issue asks for one) is generous because 2 cores are shared with other jobs, and it would still catch a
    display that only starts after the import."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    t0 = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its stdin/stdout/stderr
        os.execve(sys.executable, [sys.executable, "-m", "huluexport.cli", *BUILD, "--out", str(tmp_path / "b")],
                  env)
    chunks: list[tuple[float, bytes]] = []
    deadline = t0 + 600
    while time.perf_counter() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append((time.perf_counter() - t0, data))
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = b"".join(c for _, c in chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    seen = b""
    first = loaded = None  # when the first phase's name showed, when its ✓ line did (the import has ended)
    for t, c in chunks:
        seen += c
        shown = _strip(seen.decode("utf-8", "replace"))
        if first is None and "load the exporter" in shown:
            first = t
        if loaded is None and "✓ load the exporter" in shown:
            loaded = t
    assert first is not None and loaded is not None, text[-2000:]
    assert first < loaded
    assert first <= 5.0, f"first output after {first:.2f} s"
    assert "\x1b[" in text  # the live display (rich), not plain lines
    shown = _strip(text)
    assert "✓ load the exporter (torch, onnx)" in shown and "✓ decoder: save" in shown
    assert re.search(r"\d+ phases in ", shown) and f"bundle: {tmp_path / 'b'}" in shown


def _strip(text: str) -> str:
    """The text without terminal control sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
