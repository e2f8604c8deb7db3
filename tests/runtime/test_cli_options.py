"""The commands as users run them (subprocess, real tiny bundle): `python -m hulurt`, the `hulurt` dispatcher and
`huluexport run` accept the same options from one table and refuse bad ones in one line (exit 2, no traceback,
the argument named); a closed stdout ends the run quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e.bundles import bundle
from hulurt import cli as hulurt_cli
from hulurt.options import RUN_OPTIONS

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}


def run(argv: list[object], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) if isinstance(a, Path) else a for a in argv], check=False, capture_output=True,
                          text=True, timeout=timeout, env=ENV, errors="backslashreplace")


HULURT = [sys.executable, "-m", "hulurt"]
HULUEXPORT_RUN = [str(BIN / "huluexport"), "run"]


@pytest.fixture(scope="module")
def tiny() -> Path:
    return bundle("qwen2")


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def option_strings(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", help_text.split("options:", 1)[1]))


def test_both_commands_accept_exactly_the_table() -> None:
    table = {f for o in RUN_OPTIONS if not o.positional for f in o.flags} | {"-h", "--help"}
    a = run([*HULURT, "--help"])
    b = run([*HULUEXPORT_RUN, "--help"])
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    assert option_strings(a.stdout) == option_strings(b.stdout) == table
    # the help bodies are the same text: one parser, two program names
    body_a = a.stdout.split("options:", 1)[1].split("\n\nsubcommands:")[0]
    assert body_a.strip() == b.stdout.split("options:", 1)[1].strip()


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--seed", "-1"], "--seed"),
        (["--temperature", "1e-45"], "--temperature"),
        (["--top-p", "2"], "--top-p"),
        (["--top-k", "-1"], "--top-k"),
        (["--top-k", "3"], "--top-k"),  # greedy mode: a sampling knob would be ignored
        (["--threads", "1000"], "--threads"),
        (["--threads", str(10**12)], "--threads"),
        (["--greedy", "--temperature", "0.5"], "--temperature"),
    ],
)
def test_same_refusal_from_both_commands(tiny: Path, argv: list[str], named: str) -> None:
    a = one_line(run([*HULURT, tiny, "--prompt", "hi", *argv]))
    b = one_line(run([*HULUEXPORT_RUN, tiny, "--prompt", "hi", *argv]))
    assert f"argument {named}" in a
    assert a.replace("see hulurt --help", "") == b.replace("see huluexport run --help", "")


def test_invalid_utf8_prompt(tiny: Path) -> None:
    for cmd in (HULURT, HULUEXPORT_RUN):
        r = subprocess.run([*cmd, str(tiny), "--prompt", b"what is \xff\xfe?"], check=False, capture_output=True,
                           timeout=180, env=ENV)
        line = one_line(subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode()))
        assert "argument --prompt: is not valid UTF-8 (byte 0xff" in line


def test_named_pipe_directory_and_device_as_image(tiny: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "named pipe"), (tmp_path, "directory"), (Path("/dev/zero"), "character device")):
        line = one_line(run([*HULURT, tiny, "--prompt", "hi", "--image", path], timeout=60))
        assert "argument --image" in line and kind in line and str(path) in line


def test_verbose_spelled_both_ways(tiny: Path) -> None:
    for argv in ([*HULURT, tiny, "--prompt", "hi", "--max-new-tokens", "9999", "-v"],
                 [*HULUEXPORT_RUN, tiny, "--prompt", "hi", "--max-new-tokens", "9999", "-v"],
                 [str(BIN / "huluexport"), "-v", "run", tiny, "--prompt", "hi", "--max-new-tokens", "9999"]):
        r = run([*argv, "--skip-hash-check"])
        assert r.returncode != 0 and "Traceback" in r.stderr and "ContextLengthError" in r.stderr, argv


def test_closed_stdout_ends_quietly(tiny: Path) -> None:
    """`hulurt ... | head -c1`: the reader goes away mid-answer; no BrokenPipeError traceback, exit 141."""
    for cmd in (HULURT, HULUEXPORT_RUN):
        p = subprocess.Popen([*cmd, str(tiny), "--prompt", "Describe the chest radiograph.", "--max-new-tokens",
                              "3000", "--skip-hash-check", "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.read(1)  # the answer started
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=180) == hulurt_cli.EXIT_BROKEN_PIPE, err
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_dispatcher_runs_subcommand_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """SUBCOMMANDS is the hook for `hulurt serve|batch|engines`: word -> module with main(argv)."""
    (tmp_path / "hulu_probe_cmd.py").write_text(
        "import sys\ndef main(argv):\n    print('probe got', argv)\n    return 7\n")
    (tmp_path / "hulu_probe_broken.py").write_text("import hulu_probe_no_such_dependency\ndef main(argv): return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(hulurt_cli.SUBCOMMANDS, "probe", "hulu_probe_cmd")
    monkeypatch.setitem(hulurt_cli.SUBCOMMANDS, "broken", "hulu_probe_broken")
    monkeypatch.setitem(hulurt_cli.SUBCOMMANDS, "absent", "hulu_probe_absent")
    assert hulurt_cli.main(["probe", "--port", "1", "x"]) == 7
    assert capsys.readouterr().out == "probe got ['--port', '1', 'x']\n"
    assert hulurt_cli.main(["absent", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: `hulurt absent` is not available in this installation (hulu_probe_absent is missing)"]
    assert hulurt_cli.main(["broken"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'hulu_probe_no_such_dependency'" in err[0] and "not installed" in err[0]
    for word in ("serve", "batch", "engines"):
        assert hulurt_cli.SUBCOMMANDS[word] == f"hulurt.{word}"


def test_run_word_and_console_script_equal_the_plain_form(tiny: Path) -> None:
    args = [tiny, "--prompt", "Describe the chest radiograph.", "--max-new-tokens", "6", "--skip-hash-check"]
    plain = run([*HULURT, *args])
    assert plain.returncode == 0 and plain.stdout.strip(), plain.stderr
    assert run([*HULURT, "run", *args]).stdout == plain.stdout
    script = BIN / "hulurt"
    if script.is_file():  # installed by `pip install ./runtime` (console_scripts entry)
        assert run([script, "run", *args]).stdout == plain.stdout
