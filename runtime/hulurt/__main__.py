"""`python -m hulurt BUNDLE --prompt TEXT [--image ...] [--volume ...] [--video ...]`: stream an answer, then one
timing line. argparse only (no click on the device). Bad input: one line on stderr, exit 2; -v adds the traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hulurt.backends.base import PROVIDERS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hulurt",
        description="Answer a prompt about text, images, a CT/MR volume or a video with a huluexport bundle "
        "(onnxruntime; no torch). The answer streams to stdout, the timing summary goes to stderr.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory written by `huluexport build` (has manifest.json)")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--image", type=Path, action="append", default=[], metavar="PATH",
                   help="a 2-D image (PNG/JPEG/..., or a single DICOM file); repeat for several")
    p.add_argument("--volume", type=Path, metavar="PATH|DICOM_DIR",
                   help="a 3-D volume: NIfTI file (.nii/.nii.gz) or a directory holding one DICOM series")
    p.add_argument("--video", type=Path, metavar="PATH", help="a video file (mp4, ...)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="most tokens to generate (default: the bundle's default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    mode.add_argument("--temperature", type=float, default=None, metavar="T", help="sample with this temperature")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sampling: keep the K most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="sampling: nucleus mass (1.0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="1.0 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (repeatable runs)")
    p.add_argument("--no-token-reduction", action="store_true",
                   help="keep every visual token of videos/volumes even if the bundle enables token reduction")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="intra-op threads (0 = engine default)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto",
                   help="execution provider: auto picks TensorRT EP, then CUDA EP, then CPU (onnxruntime); "
                   "trt-native is the untested native TensorRT place holder")
    p.add_argument("--skip-hash-check", action="store_true",
                   help="check bundle file sizes only, not their sha256 (faster for large bundles)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress; show tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from hulurt.errors import HuluRuntimeError

    try:
        return _run(args)
    except HuluRuntimeError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from hulurt.api import load
    from hulurt.sampling import SamplingConfig

    if args.temperature is None:
        sampling = SamplingConfig(greedy=True, repetition_penalty=args.repetition_penalty)
    else:
        sampling = SamplingConfig(
            greedy=False, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty, seed=args.seed,
        )
    model = load(args.bundle, provider=args.provider, threads=args.threads, verify_hashes=not args.skip_hash_check)
    gen = model.stream(
        args.prompt,
        images=args.image,
        volume=args.volume,
        video=args.video,
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        token_reduction=False if args.no_token_reduction else None,
    )
    out = sys.stdout
    for piece in gen:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    assert gen.timings is not None  # set when the iteration ends
    print(gen.timings.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
