"""The `huluexport` click group: parse arguments, build a typed config, call one function. No logic here.

Commands live in `huluexport/commands/<area>.py`, one module per area, each with `register(group)`;
heavy imports (torch, onnx) stay inside the command bodies so `huluexport --help` is instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from huluexport import __version__
from huluexport.errors import HuluError

COMMAND_MODULES = (
    "huluexport.commands.checkpoint",
    "huluexport.commands.export",
    "huluexport.commands.run",
    "huluexport.commands.bench",
    "huluexport.commands.engines",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="huluexport")
@click.option("-v", "--verbose", is_flag=True, help="Log each step, print the phase table at the end, and show "
              "full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors: no progress, no summary.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Export Hulu-Med to ONNX/TensorRT bundles, check them against the PyTorch reference, and run them.

    Progress goes to stderr (docs/cli.md): a live display on a terminal, plain lines when stderr is not one,
    nothing with -q; results go to stdout."""
    from huluexport import progress

    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet exclude each other")
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.with_resource(progress.reporting(progress.pick_mode(quiet), table=verbose))


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # an area not written yet
        if exc.name != _name:
            raise
        continue
    _mod.register(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one line on stderr, exit 2 for bad input and 1 otherwise (`exit_code`); -v shows
    the traceback."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        cli.main(args=args, prog_name="huluexport", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except HuluError as exc:
        if verbose:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code(exc))


def exit_code(exc: BaseException) -> int:
    """2 for bad input (a file, manifest, checkpoint, config or option the user gave us), 1 for a failure of
    ours or of a result (export failed, parity beyond tolerance, a backend that cannot run)."""
    from hulurt.errors import ContextLengthError, ManifestError, UnsupportedInputError

    from huluexport.errors import CheckpointError, ConfigError

    return 2 if isinstance(exc, (UnsupportedInputError, ManifestError, ConfigError, CheckpointError,
                                 ContextLengthError)) else 1


if __name__ == "__main__":
    main()
