"""The `hulurt` command: `hulurt BUNDLE --prompt TEXT ...` (= `hulurt run ...` = `python -m hulurt ...`) answers
one request; `hulurt serve|batch|engines ...` hand their arguments to the module SUBCOMMANDS names
(docs/cli.md). argparse only: no click on the device. Bad input: one line on stderr, exit 2; -v adds the
traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

# Subcommand -> module with `main(argv: list[str]) -> int` (argv without the subcommand word). Imported only
# when its word is used, so `hulurt BUNDLE ...` never loads a server. A module that is not installed yet gets
# a one-line refusal. Add a subcommand: one entry here, one module with `main`.
SUBCOMMANDS: dict[str, str] = {
    "run": "hulurt.cli",  # the explicit spelling of the default (runs `run_main`)
    "serve": "hulurt.serve",
    "batch": "hulurt.batch",
    "engines": "hulurt.engines",
}

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer killed by SIGPIPE (128 + 13)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hulurt` console script and `python -m hulurt`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        word, rest = args[0], args[1:]
        if SUBCOMMANDS[word] == __name__:
            return run_main(rest, prog=f"hulurt {word}")
        return _dispatch(word, rest)
    if args and args[0] in ("-h", "--help"):
        from hulurt.options import build_parser

        build_parser("hulurt").print_help()
        print(f"\nsubcommands: hulurt {{{','.join(SUBCOMMANDS)}}} ... (`hulurt SUBCOMMAND --help`); "
              "`hulurt BUNDLE ...` is `hulurt run BUNDLE ...`")
        return 0
    return run_main(args)


def _dispatch(word: str, argv: list[str]) -> int:
    module = SUBCOMMANDS[word]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # the module is there but a package it needs is not: say which
            print(f"error: `hulurt {word}` needs the Python package {e.name!r}, which is not installed "
                  f"(see docs/cli.md for the extra that provides it)", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"error: `hulurt {word}` is not available in this installation ({module} is missing)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    entry: Callable[[list[str]], int | None] | None = getattr(mod, "main", None)
    if entry is None:
        print(f"error: `hulurt {word}`: {module} has no main(argv)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return int(entry(argv) or 0)


def run_main(argv: Sequence[str], prog: str = "hulurt") -> int:
    from hulurt.options import parse_run_args

    try:
        ns = parse_run_args(argv, prog)
    except SystemExit as e:  # a refusal (printed, exit 2) or --help (exit 0): an exit status, as for errors
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return guarded(lambda: _run(ns), ns.verbose)


def guarded(body: Callable[[], int], verbose: bool) -> int:
    """Run `body`, turning hulurt's errors into one line + exit 2 (the traceback with -v), Ctrl-C into 130 and a
    closed stdout (`| head`) into a quiet exit."""
    from hulurt.errors import HuluRuntimeError

    try:
        return body()
    except HuluRuntimeError as exc:
        if verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so the interpreter's final flush cannot raise
    BrokenPipeError again at exit (the recipe of the Python docs' signal module notes)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def write_answer(pieces: Iterable[str], out: TextIO | None = None) -> None:
    """Stream text pieces to stdout as they come (flushed each), then a newline. A closed pipe raises
    BrokenPipeError, which `guarded` turns into a quiet exit and which stops the generation."""
    out = sys.stdout if out is None else out
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


def _run(ns: argparse.Namespace) -> int:
    from hulurt.api import load
    from hulurt.options import request_kwargs

    load_kw, stream_kw = request_kwargs(ns)
    model = load(**load_kw)
    gen = model.stream(**stream_kw)
    write_answer(gen)
    assert gen.timings is not None  # set when the iteration ends
    print(gen.timings.summary(), file=sys.stderr)
    return 0

