"""`huluexport plan` (will it fit?) and `huluexport bench` (measured latency per stage): parse, call, show."""

from __future__ import annotations

import json
from pathlib import Path

import click
from hulurt.backends.base import PROVIDERS

from huluexport.config import SIZES
from huluexport.devices import NAMES as TARGET_NAMES
from huluexport.plan.cost import PRECISIONS

HELP = {
    "plan": "Will SIZE at PRECISION with this input fit on TARGET? Memory, largest volume/context, bounds.",
    "size": "Model size preset.",
    "target": "Device (huluexport/devices.py; cpu, generic and tiny = this host, bandwidth measured).",
    "precision": "Weight precision (see the policy printed with the plan).",
    "volume_slices": "A CT/MR volume of N slices at 512x512.",
    "video_frames": "A video of N frames at 360x640 (HxW).",
    "image": "A 2-D image of WIDTHxHEIGHT pixels, e.g. 512x512.",
    "max_new_tokens": "Tokens to generate (context = prompt + this).",
    "prompt_tokens": "Text tokens of the question and chat template.",
    "vision_batch": "Plan the vision piece in batches of N frames (default: all frames in one call).",
    "prefill_chunk": "Plan the prefill in chunks of N tokens (default: the whole prompt at once).",
    "json": "Write the result as JSON to FILE ('-' = stdout, no table).",
    "bench": "Measure each stage of BUNDLE (median and spread over repeats after warm-up), with a roofline.",
    "preset": "Synthetic input preset.",
    "frames": "Slices (volume) or frames (video) of the synthetic input.",
    "resolution": "Side (pixels) of synthetic image/volume frames.",
    "media": "Benchmark on this file instead of a preset (image, DICOM file or series dir, NIfTI, video; "
    "repeatable). Reading it is part of the preprocess stage.",
    "warmup": "Untimed runs first.",
    "repeats": "Timed runs.",
    "compare_reference": "Also run the PyTorch reference on the same inputs, same process; report ratios.",
    "provider": "onnxruntime execution provider of the runtime side (auto = CUDA, then TensorRT, when present).",
    "sequential": "With --compare-reference: measure the runtime, free it, then the reference (less memory) "
    "instead of alternating their runs.",
    "markdown": "Write a Markdown report to FILE.",
    "plot": "Write a PNG (stage breakdown + ratios) to FILE.",
    "threads": "CPU threads for onnxruntime and torch.",
    "bench_target": "Device whose memory bandwidth bounds the decode roofline (huluexport/devices.py; cpu, "
    "generic and tiny = this host, probed).",
}


def register(group: click.Group) -> None:
    group.add_command(plan_cmd)
    group.add_command(bench_cmd)


@click.command("plan", help=HELP["plan"])
@click.option("--size", type=click.Choice(list(SIZES)), default="7b", show_default=True, help=HELP["size"])
@click.option(
    "--target",
    type=click.Choice(TARGET_NAMES),
    required=True,
    help=HELP["target"],
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp16",
    show_default=True,
    help=HELP["precision"],
)
@click.option("--volume-slices", type=click.IntRange(min=1), help=HELP["volume_slices"])
@click.option("--video-frames", type=click.IntRange(min=1), help=HELP["video_frames"])
@click.option("--image", "image", metavar="WxH", help=HELP["image"])
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help=HELP["max_new_tokens"],
)
@click.option(
    "--prompt-tokens", type=click.IntRange(min=0), default=96, show_default=True, help=HELP["prompt_tokens"]
)
@click.option("--vision-batch", type=click.IntRange(min=1), default=None, help=HELP["vision_batch"])
@click.option("--prefill-chunk", type=click.IntRange(min=1), default=None, help=HELP["prefill_chunk"])
@click.option("--json", "json_out", metavar="FILE", help=HELP["json"])
def plan_cmd(
    size: str,
    target: str,
    precision: str,
    volume_slices: int | None,
    video_frames: int | None,
    image: str | None,
    max_new_tokens: int,
    prompt_tokens: int,
    vision_batch: int | None,
    prefill_chunk: int | None,
    json_out: str | None,
) -> None:
    from huluexport import plan as P

    given = [
        n
        for n, v in (("--volume-slices", volume_slices), ("--video-frames", video_frames), ("--image", image))
        if v is not None
    ]
    if len(given) > 1:
        raise click.UsageError(
            f"give at most one of --volume-slices, --video-frames, --image; got {', '.join(given)}"
        )
    kw = {"prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens}
    if volume_slices is not None:
        inp = P.InputSpec(kind="volume", frames=volume_slices, height=512, width=512, **kw)
    elif video_frames is not None:
        inp = P.InputSpec(kind="video", frames=video_frames, height=360, width=640, **kw)
    elif image is not None:
        inp = P.image_input(image, **kw)
    else:
        inp = P.InputSpec(**kw)
    result = P.plan(
        size, target, precision, inp, vision_batch_frames=vision_batch, prefill_chunk_tokens=prefill_chunk
    )
    if json_out:
        text = json.dumps(result.to_json(), indent=2)
        if json_out == "-":
            click.echo(text)
            return
        Path(json_out).write_text(text + "\n")
    from rich.console import Console

    Console(width=140).print(P.render_plan(result))


@click.command("bench", help=HELP["bench"])
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--preset",
    "preset_name",
    type=click.Choice(["text", "image", "volume", "video"]),
    default="image",
    show_default=True,
    help=HELP["preset"],
)
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True, help=HELP["frames"])
@click.option(
    "--resolution", type=click.IntRange(min=28), default=224, show_default=True, help=HELP["resolution"]
)
@click.option(
    "--media",
    "media_files",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help=HELP["media"],
)
@click.option("--prompt", default="Describe the findings.", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help=HELP["warmup"])
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help=HELP["repeats"])
@click.option("--threads", type=click.IntRange(min=1), default=None, help=HELP["threads"])
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default="auto",
    show_default=True,
    help=HELP["provider"],
)
@click.option(
    "--target",
    type=click.Choice(TARGET_NAMES),
    default="cpu",
    show_default=True,
    help=HELP["bench_target"],
)
@click.option("--compare-reference", is_flag=True, help=HELP["compare_reference"])
@click.option(
    "--reference-device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the PyTorch reference runs: cpu (fp32), or cuda (fp16 eager, the GPU baseline).",
)
@click.option(
    "--reference-dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=None,
    help="The reference's dtype (default: float32 on cpu, float16 on cuda).",
)
@click.option(
    "--decoder-form",
    type=click.Choice(["v1-concat", "gqa-static"]),
    default=None,
    help="Force the runtime's decoder form (default: as hulurt.load chooses: gqa-static on CUDA when present).",
)
@click.option("--no-cuda-graph", is_flag=True, help="gqa-static on CUDA without CUDA graph capture.")
@click.option("--host-rows", is_flag=True,
              help="gqa-static on a GPU: gather the visual rows on the host, as before hulurt.device_rows.")
@click.option(
    "--check-steps",
    type=click.IntRange(min=0),
    default=None,
    help="With --compare-reference: one more untimed greedy run per side of N tokens (at most --max-new-tokens; "
    "default 32) with every logits row kept: first divergence and logit margins in the report (0: off).",
)
@click.option("--sequential", is_flag=True, help=HELP["sequential"])
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Checkpoint of the reference (default: the one the bundle's manifest names).",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help=HELP["json"])
@click.option("--markdown", type=click.Path(path_type=Path), help=HELP["markdown"])
@click.option("--plot", type=click.Path(path_type=Path), help=HELP["plot"])
def bench_cmd(
    bundle: Path,
    preset_name: str,
    frames: int,
    resolution: int,
    media_files: tuple[Path, ...],
    prompt: str,
    max_new_tokens: int,
    warmup: int,
    repeats: int,
    threads: int | None,
    provider: str,
    target: str,
    compare_reference: bool,
    reference_device: str,
    reference_dtype: str | None,
    decoder_form: str | None,
    no_cuda_graph: bool,
    host_rows: bool,
    check_steps: int | None,
    sequential: bool,
    checkpoint: Path | None,
    json_out: Path | None,
    markdown: Path | None,
    plot: Path | None,
) -> None:
    from huluexport import bench as B

    cfg = B.BenchConfig(
        bundle=bundle,
        preset=preset_name,
        frames=frames,
        resolution=resolution,
        media_files=media_files,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        compare_reference=compare_reference,
        checkpoint=checkpoint,
        target=target,
        extra={
            "sequential": sequential,
            "provider": provider,
            "reference_device": reference_device,
            "reference_dtype": reference_dtype,
            "decoder_form": decoder_form,
            "no_cuda_graph": no_cuda_graph,
            "host_rows": host_rows,
            **({} if check_steps is None else {"check_steps": check_steps}),
        },
    )
    report = B.run_bench(cfg)
    from rich.console import Console

    Console(width=140).print(B.render_report(report))
    B.write_outputs(report, json_path=json_out, markdown_path=markdown, plot_path=plot)
