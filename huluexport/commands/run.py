"""`huluexport run`: `hulurt run` with rich progress while the bundle loads and the inputs are read, then the
streamed answer and the timing line. The arguments go unparsed to hulurt's own parser (hulurt.options), so
both commands accept exactly the same options, checked the same way (docs/cli.md); no logic here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import click

PROG = "huluexport run"


def register(group: click.Group) -> None:
    @group.command(
        "run",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False},
        add_help_option=False,  # --help goes to hulurt's parser, which knows the options
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def run(ctx: click.Context, args: tuple[str, ...]) -> None:
        """Answer a prompt about text, images, a volume or a video with a bundle (`huluexport run --help`)."""
        from hulurt.cli import guarded
        from hulurt.options import parse_run_args

        ns = parse_run_args(list(args), PROG)
        verbose = bool(ns.verbose or (ctx.obj or {}).get("verbose"))
        if ns.verbose:
            import logging

            logging.getLogger().setLevel(logging.INFO)
        code = guarded(lambda: _run(ns), verbose)
        if code:
            sys.exit(code)


def _run(ns: argparse.Namespace) -> int:
    from hulurt.api import load
    from hulurt.cli import write_answer
    from hulurt.options import request_kwargs
    from rich.console import Console

    load_kw, stream_kw = request_kwargs(ns)
    err = Console(stderr=True)
    hashes = "sha256" if load_kw.get("verify_hashes", True) else "sizes only"
    with err.status(f"checking {load_kw['bundle']} ({hashes})"):
        model = load(**load_kw)
    with err.status("reading and preprocessing inputs") as status:
        gen = model.stream(**stream_kw)
        status.update("vision encoder and prefill")
        pieces = iter(gen)
        first = next(pieces, "")
    write_answer(_chain(first, pieces))
    assert gen.timings is not None  # set when the iteration ends
    err.print(gen.timings.summary(), highlight=False, soft_wrap=True)
    return 0


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
