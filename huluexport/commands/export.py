"""`huluexport build`, `inspect`, `verify`, `trt-check`, `quantize`: parse arguments, build a typed config, call
one function."""

from __future__ import annotations

from pathlib import Path

import click

from huluexport.config import SIZES
from huluexport.devices import NAMES as TARGET_NAMES

HELP = {
    "build": "Export a checkpoint (or random weights of a preset size) to a bundle directory: vision/embed/decoder "
    "ONNX graphs + external weights, tokenizer and templates, manifest.json.",
    "checkpoint": "Hulu-Med checkpoint: a directory (HF-version or original layout), or a Hugging Face Hub repo id "
    "such as ZJU-AI4H/Hulu-Med-7B, taken from the local Hugging Face cache when it is there and downloaded into "
    "it otherwise. The manifest records the repo id and commit (or the folder's name) and every file's sha256.",
    "revision": "Hub revision (branch, tag or commit) of --checkpoint ORG/NAME (default: main).",
    "cache_dir": "Hugging Face cache directory (default: huggingface_hub's, i.e. HF_HUB_CACHE or "
    "~/.cache/huggingface/hub).",
    "offline": "Never contact the Hub: use the cached copy or fail naming the command that downloads it "
    "(HF_HUB_OFFLINE=1 does the same).",
    "out": "Bundle directory to create (written to a temporary sibling and moved into place when complete).",
    "size": "Preset size. With --checkpoint: the checkpoint must match it; with --random-weights: the model to build.",
    "random_weights": "No checkpoint: deterministic random weights (for size/memory tests and CI).",
    "seed": "Seed of --random-weights.",
    "layers": "Build a shallow slice: the first N decoder and vision layers (full width).",
    "vision_layers": "Vision tower depth on its own (default: as --layers, capped at the tower's depth), e.g. "
    "--layers 4 --vision-layers 27 for a decoder slice with the full tower.",
    "precision": "fp32, or fp16 with LayerNorm/RMSNorm, softmax and RoPE kept in fp32.",
    "target": "Device (huluexport/devices.py): dynamic dim ranges (TensorRT profiles, runtime limits).",
    "overwrite": "Replace an existing bundle at --out: only a huluexport bundle (never the input, a directory holding "
    "it, a file, a link or a directory of other files); the old one is removed only after the new one is complete.",
    "dump_dir": "Write each piece's graph (no weights) after every pass into this directory.",
    "decoder_form": "Decoder form(s) to export, repeatable: v1-concat (decoder.onnx, every backend incl. TensorRT) "
    "and/or gqa-static (decoder_gqa.onnx: com.microsoft::GroupQueryAttention over in-place KV buffers, fixed "
    "decode-step shapes for CUDA graphs; onnxruntime CPU/CUDA). hulurt runs gqa-static on the CUDA EP, v1 "
    "elsewhere (docs/gpu.md).",
    "trt_check": "After the build, parse and build every graph with TensorRT (tensorrt-rtx).",
    "inspect": "Print a bundle's manifest readably: pieces and their I/O, dims and ranges, tokens, files, versions.",
    "no_hash": "Skip the sha256 check of the files (sizes are still checked).",
    "verify": "Run BUNDLE on onnxruntime and the PyTorch reference side by side; one row per output. Exits non-zero "
    "when any tolerance of huluexport/tolerances.py is exceeded.",
    "verify_checkpoint": "Checkpoint (directory or Hub repo id) to compare against. Default: the Hub repo and "
    "commit recorded in the manifest (from the local cache), or its random seed; a bundle built from a local "
    "folder needs this option, since the manifest records only the folder's name.",
    "steps": "Greedy decode steps compared after the prefill.",
    "trt": "Parse and build every graph of BUNDLE with TensorRT (tensorrt-rtx builds on the CPU), with optimization "
    "profiles from the bundle's dim ranges.",
    "engines": "Also write the engines (<piece>.plan) into this directory.",
    "quantize": "Copy BUNDLE to --out with the decoder's weights (its layers and the lm_head) quantized weight-only "
    "to int8 or int4 (onnxruntime MatMulNBits, CPU and CUDA kernels; activations stay at the bundle's precision), "
    "in every decoder form the bundle has: decoder (v1) and decoder_gqa (the form hulurt runs on a GPU). From an "
    "fp32 bundle it cuts the bytes read per decoded token about 3.5x (int8) or 6x (int4), from fp16 about 1.8x "
    "or 3.4x. Streams one matrix at a time. "
    "--format qdq writes the int4 form TensorRT builds instead of MatMulNBits (v1 decoder only).",
    "piece": "Quantize only this piece (repeatable): decoder (v1-concat) or decoder_gqa (gqa-static). Default: "
    "every decoder form the bundle has (qdq: decoder).",
    "quantize_out": "Quantized bundle directory to create (temporary sibling, moved into place when complete).",
    "bits": "Weight bits: 8 (int8, near-lossless) or 4 (int4, 2x smaller again, visibly lossier).",
    "block_size": "Weights per quantization block along the input dim (default 32 for matmulnbits: one scale + "
    "zero point each; 128 for qdq: one scale each).",
    "format": "matmulnbits: onnxruntime's MatMulNBits (CPU kernels; TensorRT cannot build it). qdq: INT4 weights + "
    "DequantizeLinear (opset 21, symmetric, no zero points), the weight-only int4 form TensorRT builds; --bits 4.",
    "accuracy_level": "MatMulNBits accuracy_level: 4 = each matmul input block is quantized to int8 on the fly "
    "(integer kernels: the fast CPU path, slightly more error); 0 = fp matmul inputs (onnxruntime 1.32 CPU: int4 "
    "3.7x slower per decoded token than 4, int8 100x slower; see benchmarks/results/quantize.md).",
}


def register(group: click.Group) -> None:
    group.add_command(build_cmd)
    group.add_command(inspect_cmd)
    group.add_command(verify_cmd)
    group.add_command(trt_check_cmd)
    group.add_command(quantize_cmd)


@click.command("build", help=HELP["build"])
@click.option("--checkpoint", metavar="DIR|ORG/NAME", help=HELP["checkpoint"])
@click.option("--revision", help=HELP["revision"])
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help=HELP["cache_dir"])
@click.option("--offline", is_flag=True, default=None, help=HELP["offline"])
@click.option("--out", type=click.Path(path_type=Path), required=True, help=HELP["out"])
@click.option("--size", type=click.Choice(list(SIZES)), help=HELP["size"])
@click.option("--random-weights", is_flag=True, help=HELP["random_weights"])
@click.option("--seed", type=int, default=0, show_default=True, help=HELP["seed"])
@click.option("--layers", type=click.IntRange(min=1), help=HELP["layers"])
@click.option("--vision-layers", type=click.IntRange(min=1), help=HELP["vision_layers"])
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help=HELP["precision"],
)
@click.option(
    "--target", type=click.Choice(TARGET_NAMES), default="generic", show_default=True, help=HELP["target"]
)
@click.option("--overwrite", is_flag=True, help=HELP["overwrite"])
@click.option("--dump-dir", type=click.Path(path_type=Path, file_okay=False), help=HELP["dump_dir"])
@click.option(
    "--decoder-form",
    "decoder_forms",
    type=click.Choice(["v1-concat", "gqa-static"]),
    multiple=True,
    default=("v1-concat",),
    show_default=True,
    help=HELP["decoder_form"],
)
@click.option("--trt-check", is_flag=True, help=HELP["trt_check"])
@click.option("--trace-all-layers", is_flag=True, hidden=True,
              help="Trace every layer instead of cloning layer 1 of a 3-layer trace (slower; for comparisons).")
def build_cmd(
    checkpoint: str | None,
    revision: str | None,
    cache_dir: Path | None,
    offline: bool | None,
    out: Path,
    size: str | None,
    random_weights: bool,
    seed: int,
    layers: int | None,
    vision_layers: int | None,
    precision: str,
    target: str,
    overwrite: bool,
    dump_dir: Path | None,
    decoder_forms: tuple[str, ...],
    trt_check: bool,
    trace_all_layers: bool,
) -> None:
    import logging

    from huluexport import progress

    with progress.phase("load the exporter (torch, onnx)"):  # seconds: shown at once, before the imports
        from huluexport.export.pipeline import BuildOptions, build

    for noisy in ("onnxscript", "onnx_ir"):  # one line per folded constant at INFO; our phases log their own
        logging.getLogger(noisy).setLevel(logging.WARNING)
    opts = BuildOptions(
        out=out,
        checkpoint=checkpoint,
        revision=revision,
        cache_dir=cache_dir,
        offline=offline or None,
        size=size,
        random_weights=random_weights,
        seed=seed,
        layers=layers,
        vision_layers=vision_layers,
        precision=precision,
        target=target,
        overwrite=overwrite,
        dump_dir=dump_dir,
        decoder_forms=tuple(dict.fromkeys(decoder_forms)),
        trace_all_layers=trace_all_layers,
    )
    path = build(opts)
    click.echo(f"bundle: {path}")
    if trt_check:
        _echo_trt(path, None)


@click.command("inspect", help=HELP["inspect"])
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--no-hash", is_flag=True, help=HELP["no_hash"])
def inspect_cmd(bundle: Path, no_hash: bool) -> None:
    from hulurt.manifest import load_manifest

    from huluexport.export.graph_io import check_graphs

    m = load_manifest(bundle, verify_hashes=not no_hash)
    check_graphs(m)  # the manifest's dims against the graphs' declared inputs/outputs
    click.echo(describe(m))


@click.command("verify", help=HELP["verify"])
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--checkpoint", metavar="DIR|ORG/NAME", help=HELP["verify_checkpoint"])
@click.option("--steps", type=click.IntRange(min=0), default=16, show_default=True, help=HELP["steps"])
@click.option("--no-hash", is_flag=True, help=HELP["no_hash"])
def verify_cmd(bundle: Path, checkpoint: str | None, steps: int, no_hash: bool) -> None:
    from huluexport import progress
    from huluexport.errors import ParityError

    with progress.phase("load the reference (torch) and onnxruntime"):
        from huluexport.validate import verify

    report = verify(bundle, checkpoint, steps=steps, verify_hashes=not no_hash)
    click.echo(report.table())
    if not report.ok:
        bad = [f"{r.piece}/{r.case}/{r.output}" for r in report.rows if not r.ok]
        bad += [f"{p.piece} activations past fp16 at {p.where}" for p in report.overflows]
        raise ParityError(f"{bundle}: {len(bad)} output(s) beyond tolerance: {', '.join(bad)}")


@click.command("trt-check", help=HELP["trt"])
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--engines", type=click.Path(path_type=Path, file_okay=False), help=HELP["engines"])
def trt_check_cmd(bundle: Path, engines: Path | None) -> None:
    _echo_trt(bundle, engines)


@click.command("quantize", help=HELP["quantize"])
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True, help=HELP["quantize_out"])
@click.option("--bits", type=click.Choice(["4", "8"]), required=True, help=HELP["bits"])
@click.option(
    "--block-size",
    type=click.Choice(["16", "32", "64", "128", "256"]),
    default=None,
    help=HELP["block_size"],
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["matmulnbits", "qdq"]),
    default="matmulnbits",
    show_default=True,
    help=HELP["format"],
)
@click.option(
    "--accuracy-level",
    type=click.Choice(["0", "4"]),
    default="4",
    show_default=True,
    help=HELP["accuracy_level"],
)
@click.option("--piece", "pieces", type=click.Choice(["decoder", "decoder_gqa"]), multiple=True, help=HELP["piece"])
@click.option("--overwrite", is_flag=True, help=HELP["overwrite"])
def quantize_cmd(
    bundle: Path, out: Path, bits: str, block_size: str | None, fmt: str, accuracy_level: str,
    pieces: tuple[str, ...], overwrite: bool,
) -> None:
    from huluexport import progress

    with progress.phase("load the quantizer (onnx, onnxruntime)"):
        from huluexport.export.quantize import QuantizeOptions, quantize

    opts = QuantizeOptions(
        src=bundle,
        out=out,
        bits=int(bits),
        block_size=int(block_size) if block_size else (128 if fmt == "qdq" else 32),
        pieces=tuple(dict.fromkeys(pieces)),
        format=fmt,
        accuracy_level=int(accuracy_level),
        overwrite=overwrite,
    )
    click.echo(f"bundle: {quantize(opts)}")


def _echo_trt(bundle: Path, engines: Path | None) -> None:
    from huluexport.export.tensorrt import check_bundle

    for r in check_bundle(bundle, engines_dir=engines):
        click.echo(
            f"{r.piece:8} {r.module} {r.version}: built, {r.engine_bytes / 1e6:.1f} MB engine, {r.seconds:.1f} s"
        )


def describe(m) -> str:
    """The manifest as readable text (used by `inspect`)."""
    dec = m.model.get("decoder") if isinstance(m.model.get("decoder"), dict) else {}
    flavour = {True: "qwen3", False: "qwen2"}.get(dec.get("qk_norm"), "decoder flavour not recorded")
    lines = [
        f"bundle      {m.root}",
        (
            f"model       {m.model.get('name')} ({m.dims.layers} decoder layers, hidden {m.dims.hidden}, "
            f"vocab {m.dims.vocab}, {flavour})"
        ),
        f"weights     {m.model.get('weights')}",
        f"precision   {m.precision} (act {m.dims.act_dtype})   target {m.target}   contract v{m.contract_version}",
        (
            f"tokens      image {m.tokens.image}, im_start {m.tokens.im_start}, im_end {m.tokens.im_end}, "
            f"eos {list(m.tokens.eos)}, pad {m.tokens.pad}"
        ),
        (
            f"reduction   {'on' if m.reduction.enabled else 'off'} (threshold {m.reduction.threshold}, min_tokens "
            f"{m.reduction.min_tokens}, {m.reduction.mode})"
        ),
        (
            f"vision      patch {m.vision.patch}, merge image {m.vision.merge_image} / video {m.vision.merge_video}, "
            f"rope theta {m.vision.rope_theta:g}, head_dim {m.vision.head_dim}"
        ),
        (
            f"limits      context {m.limits.max_context}, frames/call {m.limits.max_frames}, merged tokens/frame "
            f"{m.limits.max_groups}"
        ),
        "dim ranges  " + ", ".join(f"{k} [{r.min}, {r.opt}, {r.max}]" for k, r in m.dim_ranges.items()),
        "pieces",
    ]
    specs = m.specs()
    for name, e in m.pieces.items():
        size = sum(m.files[f].bytes for f in (e.file, e.data) if f is not None)
        lines.append(
            f"  {name:8} {e.file} (+ {e.data}) {size / 1e6:.1f} MB, opset {e.opset}, {e.precision}; "
            + ", ".join(f"{k} {v}" for k, v in e.compute.items())
        )
        for role, ts in (("in ", specs[name].inputs), ("out", specs[name].outputs)):
            shown = list(ts) if len(ts) <= 4 else [*ts[:3], None]
            for t in shown:
                if t is None:
                    lines.append(f"      {role} ... {len(ts) - 3} more like the above (per layer)")
                else:
                    lines.append(
                        f"      {role} {t.name:26} {t.dtype:8} [{', '.join(str(d) for d in t.shape)}]"
                    )
    lines.append("files")
    for rel, f in m.files.items():
        lines.append(f"  {rel:28} {f.bytes:>14,d} B  sha256 {f.sha256[:16]}")
    lines.append("tools       " + ", ".join(f"{k} {v}" for k, v in m.tools.items()))
    return "\n".join(lines)
