"""`python -m hulurt.engines BUNDLE [options]`: build the bundle's TensorRT engines on this machine, print the
equivalent trtexec lines (--print-trtexec), or check an engine directory (--check DIR). argparse only.
Errors: one line on stderr, exit 2 (-v shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def size_bytes(text: str) -> int:
    """"512M", "2G", "1048576" -> bytes."""
    t = text.strip().lower().removesuffix("b")
    unit = t[-1:] if t[-1:] in UNITS and not t[-1:].isdigit() else ""
    num = t[: len(t) - len(unit)]
    try:
        value = float(num) * UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes such as 512M, 2G or 1073741824") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive size")
    return int(value)


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle directory (has manifest.json)")
    p.add_argument("--out", type=Path,
                   help="engine directory to write (default: BUNDLE/engines/<device>-<module><version>)")
    p.add_argument("--piece", action="append", default=[], dest="pieces", metavar="NAME",
                   help="build only this piece (repeatable; default: every piece)")
    p.add_argument("--module", choices=("tensorrt", "tensorrt_rtx"),
                   help="TensorRT Python module (default: tensorrt if installed, else tensorrt_rtx)")
    p.add_argument("--sm", action="append", default=[], metavar="CC",
                   help="tensorrt_rtx: build for this compute capability (sm89, 8.7, ...; repeatable); "
                   "default portable")
    p.add_argument("--label", help="the <device> part of the engine directory name (e.g. a target such as orin-nano)")
    p.add_argument("--max-context", type=int, metavar="N", help="narrow the profile: at most N tokens of context")
    p.add_argument("--max-frames", type=int, metavar="N", help="narrow the profile: at most N frames per vision call")
    p.add_argument("--max-groups", type=int, metavar="N", help="narrow the profile: at most N merged tokens per frame")
    p.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0..5",
                   help="builder optimisation level (TensorRT's default 3; higher builds longer, may run faster)")
    p.add_argument("--workspace", type=size_bytes, metavar="BYTES", help="builder workspace limit, e.g. 2G")
    p.add_argument("--timing-cache", type=Path, metavar="FILE",
                   help="timing cache to read and update (tensorrt; default engines/timing-<module><version>.cache)")
    p.add_argument("--plugin", action="append", type=Path, default=[], metavar="SO",
                   help="TensorRT plugin library to load (default $HULU_TRT_PLUGIN when a graph has the custom op)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")


def options_from(args: argparse.Namespace):  # -> BuildOptions
    from hulurt.engines.build import BuildOptions

    return BuildOptions(
        bundle=args.bundle, out=args.out, pieces=tuple(args.pieces), module=args.module, sm=tuple(args.sm),
        label=args.label, max_context=args.max_context, max_frames=args.max_frames, max_groups=args.max_groups,
        optimization_level=args.opt_level, workspace_bytes=args.workspace, timing_cache=args.timing_cache,
        plugins=tuple(args.plugin), overwrite=args.overwrite,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hulurt.engines",
        description="Build one TensorRT engine per piece of a huluexport bundle with the TensorRT installed here "
        "(tensorrt on the target GPU, or tensorrt_rtx, which also builds ahead of time on a CPU).",
    )
    add_build_arguments(p)
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec commands, build nothing")
    p.add_argument("--check", type=Path, metavar="DIR",
                   help="check an engine directory against the installed TensorRT, this GPU and the bundle; "
                   "build nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress; show tracebacks on errors")
    return p


def run(args: argparse.Namespace, echo=print, phase=None) -> int:
    """`phase(name)`: a context manager around each engine build (huluexport engines passes its progress.phase)."""
    from hulurt.engines import meta as em
    from hulurt.engines.build import build_engines, plan_build
    from hulurt.engines.device import load_trt, query_gpu, rtx_runs_on

    if args.check is not None:
        from hulurt import manifest as rt

        m = rt.load_manifest(args.bundle, verify_hashes=False)
        trt = load_trt(args.module)
        meta = em.read(args.check)
        gpu = query_gpu()
        if gpu is not None and trt.__name__ == "tensorrt_rtx":
            rtx_runs_on(trt, gpu.compute_capability)
        em.check(meta, module=trt.__name__, version=trt.__version__,
                 device_cc=gpu.compute_capability if gpu else None,
                 onnx_sha256={p: m.files[e.file].sha256 for p, e in m.pieces.items() if e.file in m.files})
        echo(f"{meta.path}: ok ({meta.module} {meta.version}, {meta.device_name}, "
             f"{len(meta.engines)} engines" + ("" if gpu else "; no GPU here, the GPU check was not made") + ")")
        return 0
    opts = options_from(args)
    if args.print_trtexec:
        from hulurt.engines.trtexec import command_lines

        try:
            trt = load_trt(args.module)
        except em.EngineError:
            trt = None  # a JetPack host with trtexec but without the Python module: print for `tensorrt`
        if trt is None:
            import types

            trt = types.SimpleNamespace(__name__=args.module or "tensorrt", __version__="VERSION")
        for line in command_lines(plan_build(opts, trt)):
            echo(line)
        return 0
    meta = build_engines(opts, phase=phase)
    for piece, e in meta.engines.items():
        echo(f"{piece:8} {meta.module} {meta.version}: {e.file} {e.bytes / 1e6:.1f} MB in {e.build_seconds:.1f} s")
    echo(f"engines: {meta.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from hulurt.errors import HuluRuntimeError

    try:
        return run(args)
    except HuluRuntimeError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
