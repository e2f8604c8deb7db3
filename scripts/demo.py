"""End-to-end demo on an embedded default: tiny random Hulu-Med checkpoint, real MR volume, reference model.

`make demo` runs `python scripts/demo.py --out artifacts/demo`. The weights are RANDOM: the answer is noise;
the demo shows the whole path (checkpoint -> loader -> volume -> patches -> prompt -> vision -> decoder) runs,
then the deployment path: checkpoint -> `huluexport build` bundle -> `python -m hulurt`, streamed, with timings.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _default_volume() -> Path:
    from nibabel.testing import data_path

    return Path(data_path) / "anatomical.nii"  # a 3-D T1 MR volume (33 x 41 x 25) shipped with nibabel


def _run_bundle(ckpt: Path, volume: Path, args: argparse.Namespace) -> None:
    """The deployment path: checkpoint -> bundle (`huluexport build`) -> `python -m hulurt`, streamed, timed."""
    import shlex
    import subprocess

    from huluexport.export.pipeline import BuildOptions, build

    out = args.out / "bundle-tiny"
    t = time.perf_counter()
    build(BuildOptions(out=out, checkpoint=ckpt, precision="fp32", overwrite=True))
    print(f"bundle     : {out} (huluexport build, fp32, {time.perf_counter() - t:.1f} s)")
    cmd = [sys.executable, "-m", "hulurt", str(out), "--prompt", args.question, "--volume", str(volume),
           "--max-new-tokens", str(args.max_new_tokens)]
    print("runtime    : $ python -m hulurt " + shlex.join(cmd[3:]) + "   (onnxruntime, no torch)")
    print("hulurt     : ", end="", flush=True)
    subprocess.run(cmd, check=True)  # streams the answer to stdout, the timing line to stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("artifacts/demo"))
    ap.add_argument(
        "--volume", type=Path, default=None, help="a 3-D NIfTI file (default: nibabel's anatomical.nii)"
    )
    ap.add_argument("--question", default="Describe the findings in this MR volume.")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--no-runtime", action="store_true", help="skip the bundle build + hulurt run")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    from huluexport.checkpoint import from_checkpoint
    from huluexport.checkpoint.fixtures import write_checkpoint
    from huluexport.reference.weights import load_model

    t0 = time.perf_counter()
    ckpt = write_checkpoint(args.out / "checkpoint-tiny", size="tiny", seed=0)
    cfg = from_checkpoint(ckpt)
    model = load_model(ckpt, args.dtype, cfg)
    print(
        f"checkpoint : {ckpt} ({cfg.decoder.flavor} decoder, {cfg.num_parameters():,} params, {args.dtype})"
    )
    print("NOTE       : the weights are RANDOM (no real Hulu-Med weights here); the answer below is noise.")

    volume = args.volume or _default_volume()
    image_id = cfg.tokens.image
    from hulurt.inputs import InputOptions, build_inputs
    from hulurt.prompt import load_chat_template
    from hulurt.tokenizer import Tokenizer

    tok = Tokenizer.from_file(ckpt)
    opts = InputOptions(compression=cfg.reduction.enabled)
    mi = build_inputs([volume], args.question, tok, image_id, opts, load_chat_template(ckpt / "chat_template.json"))
    ids, rows, prompt = mi.input_ids[0], mi.visual_rows, mi.prompt
    patches = [v.patches for v in mi.visuals]
    grids = [tuple(v.grid_thw[1:]) for v in mi.visuals]
    decode = tok.decode
    path_used = "hulurt.inputs (the runtime's preprocessing)"
    kept, total = mi.n_kept, mi.n_visual_tokens
    t_frames, n_groups = patches[0].shape[:2]
    print(
        f"volume     : {volume} -> {t_frames} slices, patch grid {grids[0][0]}x{grids[0][1]}, "
        f"{n_groups} merged tokens/slice via {path_used}"
    )
    shown = prompt if len(prompt) < 160 else prompt[:70] + " ... " + prompt[-70:]
    print(f"prompt     : {shown!r}")
    print(f"tokens     : {len(ids)} prompt ids, {kept}/{total} visual tokens kept after token reduction")

    prep = model.prepare_compacted(ids, patches, grids, rows)
    out = model.generate(prepared=prep, max_new_tokens=args.max_new_tokens)
    print(f"answer ids : {out}")
    print(f"answer     : {decode(out)!r}")
    if not args.no_runtime:
        _run_bundle(ckpt, volume, args)
    print(f"done in {time.perf_counter() - t0:.1f} s (random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
