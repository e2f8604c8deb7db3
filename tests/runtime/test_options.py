"""hulurt.options: the one table of run options. Every row reaches a real keyword of the API it names, the
parser built from it checks values with hulurt.checks, and the API (SamplingConfig, BackendOptions,
Model.stream) refuses the same values the command line does. In-process: no subprocess, no bundle run."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import hulurt
import pytest
from hulurt import checks
from hulurt.api import Model
from hulurt.backends.base import BackendError, BackendOptions
from hulurt.errors import UnsupportedInputError
from hulurt.options import (
    RUN_OPTIONS,
    Option,
    OptionParser,
    add_options,
    build_parser,
    check_greedy_mode,
    parse_run_args,
    request_kwargs,
    sampling_config,
    select,
)
from hulurt.sampling import SamplingConfig, SamplingError


def _parse_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        parse_run_args(["bundle-dir", *argv], "hulurt")
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: argument "), lines
    return lines[0]


def test_every_row_names_a_real_keyword() -> None:
    """A row sends its value somewhere: that function must take the keyword, or the option silently dies."""
    targets = {
        "load": set(inspect.signature(hulurt.load).parameters),
        "stream": set(inspect.signature(Model.stream).parameters) - {"self"},
        "sampling": set(inspect.signature(SamplingConfig).parameters),
    }
    seen: set[str] = set()
    for opt in RUN_OPTIONS:
        assert opt.dest not in seen, f"two rows for {opt.dest}"
        seen.add(opt.dest)
        if opt.to != "cli":
            assert opt.target in targets[opt.to], f"{opt.name} -> {opt.to}({opt.target}=...) does not exist"
    assert len(seen) == len(RUN_OPTIONS) > 10


def test_defaults_give_the_api_defaults() -> None:
    ns = parse_run_args(["b", "--prompt", "hi"])
    load_kw, stream_kw = request_kwargs(ns)
    assert load_kw == {"bundle": Path("b"), "threads": 0, "provider": "auto", "verify_hashes": True}
    assert stream_kw == {"prompt": "hi", "images": [], "sampling": SamplingConfig(greedy=True)}


def test_values_reach_their_keywords(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    ns = parse_run_args(["b", "--prompt", "q", "--image", str(img), "--image", str(img), "--temperature", "0.7",
                         "--top-k", "5", "--top-p", "0.9", "--seed", "3", "--repetition-penalty", "1.1",
                         "--no-token-reduction", "--skip-hash-check", "--threads", "1", "--max-new-tokens", "7"])
    load_kw, stream_kw = request_kwargs(ns)
    assert load_kw == {"bundle": Path("b"), "threads": 1, "provider": "auto", "verify_hashes": False}
    assert stream_kw.pop("sampling") == SamplingConfig(greedy=False, temperature=0.7, top_k=5, top_p=0.9, seed=3,
                                                       repetition_penalty=1.1)
    assert stream_kw == {"prompt": "q", "images": [img, img], "max_new_tokens": 7, "token_reduction": False}


@pytest.mark.parametrize(
    "argv, named, words",
    [
        (["--seed", "-1"], "--seed", "[0, 2**64)"),
        (["--temperature", "1e-45"], "--temperature", ">= 1e-05"),
        (["--temperature", "nan"], "--temperature", "finite"),
        (["--temperature", "0.5", "--top-p", "2"], "--top-p", "(0, 1]"),
        (["--temperature", "0.5", "--top-k", "-1"], "--top-k", ">= 0"),
        (["--top-p", "2"], "--top-p", "(0, 1]"),  # the range is checked before the greedy-mode rule
        (["--top-p", "0.5"], "--top-p", "add --temperature"),
        (["--top-k", "4"], "--top-k", "add --temperature"),
        (["--seed", "4"], "--seed", "add --temperature"),
        (["--threads", "1000"], "--threads", f"to {checks.max_threads()}"),
        (["--threads", str(10**12)], "--threads", "per CPU"),
        (["--max-new-tokens", "0"], "--max-new-tokens", ">= 1"),
        (["--repetition-penalty", "inf"], "--repetition-penalty", "finite"),
        (["--prompt", "hi \udcff"], "--prompt", "not valid UTF-8 (byte 0xff at character 3)"),
        (["--prompt", "  "], "--prompt", "empty"),
    ],
)
def test_bad_values_are_one_line_naming_the_argument(capsys, argv, named, words) -> None:
    line = _parse_error(capsys, *(argv if "--prompt" in argv else ["--prompt", "hi", *argv]))
    assert f"argument {named}:" in line and words in line


def test_non_regular_files_are_refused_before_opening(capsys, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opening it for reading would block forever
    for flag, path, kind in (("--image", fifo, "named pipe"), ("--image", tmp_path, "directory"),
                             ("--video", Path("/dev/null"), "character device"),
                             ("--volume", fifo, "named pipe"), ("--image", tmp_path / "absent.png", "not found")):
        line = _parse_error(capsys, "--prompt", "hi", flag, str(path))
        assert f"argument {flag}:" in line and kind in line and str(path) in line
    assert parse_run_args(["b", "--prompt", "hi", "--volume", str(tmp_path)]).volume == tmp_path  # a series dir


def test_the_api_refuses_the_same_values() -> None:
    for kwargs, field in (({"seed": -1}, "seed"), ({"temperature": 1e-45}, "temperature"), ({"top_p": 2.0}, "top_p"),
                          ({"top_k": -1}, "top_k"), ({"seed": 2**64}, "seed")):
        with pytest.raises(SamplingError, match=field):
            SamplingConfig(greedy=False, **kwargs)
        with pytest.raises(SamplingError, match=field):  # greedy mode checks the ranges too
            SamplingConfig(greedy=True, **kwargs)
    for n in (10**12, checks.max_threads() + 1, -1):
        with pytest.raises(BackendError, match="threads must be an integer from 0"):
            BackendOptions(threads=n)
    BackendOptions(threads=checks.max_threads())


def test_an_extra_row_reaches_both_parsers() -> None:
    """How other areas extend the table: a row with a destination; the parser and the keywords follow."""
    extra = (*RUN_OPTIONS, Option(("--example-knob",), "an example knob", to="stream", metavar="NAME"))
    ns = parse_run_args(["b", "--prompt", "q", "--example-knob", "lung"], options=extra)
    assert request_kwargs(ns, extra)[1]["example_knob"] == "lung"
    assert "--example-knob NAME" in build_parser("x", extra).format_help()


def test_model_refuses_bad_prompt_and_pipe_before_reading(tmp_path: Path) -> None:
    from e2e.bundles import bundle

    model = hulurt.load(bundle("qwen2"), verify_hashes=False, threads=1)
    with pytest.raises(UnsupportedInputError, match=r"--prompt: the prompt is not valid UTF-8"):
        model.stream("bad \udcff")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedInputError, match="named pipe"):
        model.stream("hi", images=[fifo], max_new_tokens=2)
    with pytest.raises(UnsupportedInputError, match="--volume: must be a regular file or a directory"):
        model.stream("hi", volume=fifo, max_new_tokens=2)


def test_another_command_reuses_some_rows(capsys) -> None:
    """`hulurt batch`-style reuse: the selected rows parse and check exactly as in the run command."""
    rows = select("temperature", "top_p", "seed", "threads")
    assert [o.name for o in rows] == ["--temperature", "--top-p", "--seed", "--threads"]
    p = OptionParser(prog="hulurt batch")
    add_options(p, rows)
    ns = p.parse_args(["--temperature", "0.5", "--top-p", "0.9"])
    assert check_greedy_mode(ns, rows) is None
    assert sampling_config(ns, rows) == SamplingConfig(greedy=False, temperature=0.5, top_p=0.9)
    with pytest.raises(SystemExit):
        p.parse_args(["--seed", "-1"])
    assert capsys.readouterr().err.strip() == (
        "error: argument --seed: must be an integer in [0, 2**64); got -1 (see hulurt batch --help)")
    assert "add --temperature" in str(check_greedy_mode(p.parse_args(["--seed", "1"]), rows))
    with pytest.raises(KeyError, match="no run option top_q"):
        select("top_q")
