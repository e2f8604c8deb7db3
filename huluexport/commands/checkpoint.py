"""`huluexport init-checkpoint`: write a random Hulu-Med checkpoint in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import click

HELP = {
    "size": "Preset of huluexport.config.SIZES. Sizes other than tiny/tiny-qwen3 need --layers.",
    "out": "Directory to write (created if missing; existing files are overwritten).",
    "seed": "Seed of the random weights.",
    "decoder": "Decoder flavour; with --size tiny, qwen3 selects the tiny-qwen3 preset.",
    "layout": "hf: HF-version layout (sharded safetensors + index, nested vision config); "
    "original: pre-HF layout (model.vision_encoder.vision_encoder.* in pytorch_model.bin).",
    "dtype": "Stored dtype of the weights.",
    "lm_head": "auto: store lm_head.weight iff the config is untied; stored/absent force it.",
    "layers": "Shallow model with the real widths: the first N decoder layers and min(N, vision layers) vision "
    "layers (the same slice as build --layers).",
}


def register(group: click.Group) -> None:
    @group.command("init-checkpoint")
    @click.option("--size", default="tiny", show_default=True, help=HELP["size"])
    @click.option("--out", "out", required=True, type=click.Path(path_type=Path), help=HELP["out"])
    @click.option("--seed", default=0, show_default=True, type=int, help=HELP["seed"])
    @click.option("--decoder", type=click.Choice(["qwen2", "qwen3"]), default=None, help=HELP["decoder"])
    @click.option(
        "--layout",
        type=click.Choice(["hf", "original"]),
        default="hf",
        show_default=True,
        help=HELP["layout"],
    )
    @click.option(
        "--dtype",
        type=click.Choice(["bfloat16", "float32", "float16"]),
        default="bfloat16",
        show_default=True,
        help=HELP["dtype"],
    )
    @click.option(
        "--lm-head",
        type=click.Choice(["auto", "stored", "absent"]),
        default="auto",
        show_default=True,
        help=HELP["lm_head"],
    )
    @click.option("--layers", type=int, default=None, help=HELP["layers"])
    def init_checkpoint(
        size: str,
        out: Path,
        seed: int,
        decoder: str | None,
        layout: str,
        dtype: str,
        lm_head: str,
        layers: int | None,
    ) -> None:
        """Write a random checkpoint: config.json, sharded weights + index, tokenizer and side files."""
        from huluexport.checkpoint.fixtures import write_checkpoint

        path = write_checkpoint(
            out,
            size=size,
            seed=seed,
            decoder=decoder,
            layout=layout,
            dtype=dtype,
            lm_head=lm_head,
            layers=layers,
        )
        click.echo(f"wrote a random {size} checkpoint ({layout} layout) to {path}")
