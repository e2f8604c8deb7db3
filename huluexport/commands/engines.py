"""`huluexport engines BUNDLE [--target NAME] [options of python -m hulurt.engines]`: the same engine builder
as on the device (hulurt/engines), its options defined once there; `--target` names a device profile of
huluexport/devices.py, whose limits narrow the profile and name the engine directory."""

from __future__ import annotations

import click

HELP = (
    "Build one TensorRT engine per piece of BUNDLE with the installed TensorRT (tensorrt, or tensorrt_rtx which "
    "also builds on a CPU) into BUNDLE/engines/<device>-<module><version>/ with engines.json. Takes every option "
    "of `python -m hulurt.engines` (see `huluexport engines --help`), plus --target NAME (a device profile: "
    "its context/frame/token limits narrow the optimization profiles and name the directory)."
)


def register(group: click.Group) -> None:
    group.add_command(engines_cmd)


def target_args(name: str) -> list[str]:
    """--target NAME as the hulurt.engines options it stands for."""
    from huluexport.devices import TARGETS
    from huluexport.errors import ConfigError

    if name not in TARGETS:
        raise ConfigError(f"--target {name!r}: expected one of {', '.join(TARGETS)}")
    t = TARGETS[name]
    return ["--label", t.name, "--max-context", str(t.max_context), "--max-frames", str(t.max_frames),
            "--max-groups", str(t.max_groups)]


@click.command(
    "engines",
    help=HELP,
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--target", default=None, help="Device profile (huluexport/devices.py).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def engines_cmd(target: str | None, args: tuple[str, ...]) -> None:
    from hulurt.engines.__main__ import build_parser, run

    argv = list(args) + (target_args(target) if target else [])
    parser = build_parser()
    parser.prog = "huluexport engines"
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (it printed the message)
        raise click.exceptions.Exit(int(exc.code or 0)) from None
    from huluexport import progress

    run(ns, echo=click.echo, phase=progress.phase)
