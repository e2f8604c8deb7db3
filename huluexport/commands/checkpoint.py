"""`huluexport init-checkpoint`: write a random Hulu-Med checkpoint in the real on-disk layout.

The checkpoint is written into a hidden sibling of --out and moved into place when complete (the staging of
huluexport/export/staging.py, as `build` writes a bundle): an interrupted run leaves no half checkpoint.
--out may be missing, an empty directory, or an earlier init-checkpoint output (replaced); any other
directory is replaced only with --overwrite.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from huluexport.errors import ConfigError

HELP = {
    "size": "Preset of huluexport.config.SIZES. Sizes other than tiny/tiny-qwen3 need --layers.",
    "out": "Directory to write: missing, empty, or an earlier init-checkpoint output (replaced); "
    "any other directory needs --overwrite.",
    "overwrite": "Replace --out even when it is a directory init-checkpoint did not write.",
    "seed": "Seed of the random weights.",
    "decoder": "Decoder flavour; with --size tiny, qwen3 selects the tiny-qwen3 preset.",
    "layout": "hf: HF-version layout (sharded safetensors + index, nested vision config); "
    "original: pre-HF layout (model.vision_encoder.vision_encoder.* in pytorch_model.bin).",
    "dtype": "Stored dtype of the weights.",
    "lm_head": "auto: store lm_head.weight iff the config is untied; stored/absent force it.",
    "layers": "Shallow model with the real widths: the first N decoder layers and min(N, vision layers) vision "
    "layers (the same slice as build --layers). Without it the full depth (hf layout: streamed, bounded "
    "memory; a 7B is ~16 GB of bf16).",
}


def replaceable(overwrite: bool):
    """The check for an existing --out: empty, or our earlier output, or anything (a directory) with --overwrite."""
    from huluexport.checkpoint.fixtures import OUTPUT_MARKER

    def check(out: Path) -> None:
        st = os.lstat(out)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"--out {out}: is a {'symbolic link' if stat.S_ISLNK(st.st_mode) else 'file'}; "
                              "expected a directory for the checkpoint (missing, empty, or an earlier "
                              "init-checkpoint output)")
        if overwrite or not any(os.scandir(out)) or (out / OUTPUT_MARKER).is_file():
            return
        raise ConfigError(f"--out {out}: is a non-empty directory that init-checkpoint did not write (no "
                          f"{OUTPUT_MARKER}); pass --overwrite to replace it, or choose another --out")

    return check


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
    @click.option("--overwrite", is_flag=True, help=HELP["overwrite"])
    def init_checkpoint(
        size: str,
        out: Path,
        seed: int,
        decoder: str | None,
        layout: str,
        dtype: str,
        lm_head: str,
        layers: int | None,
        overwrite: bool,
    ) -> None:
        """Write a random checkpoint: config.json, sharded weights + index, tokenizer and side files."""
        from huluexport import progress
        from huluexport.checkpoint.fixtures import write_checkpoint
        from huluexport.export.staging import staged

        with progress.phase("load torch"):
            import torch  # noqa: F401  (seconds; write_checkpoint needs it)

        # overwrite=True: which existing --out may be replaced is decided by `replaceable`, not the bundle rule
        with staged(out, (), overwrite=True, replaceable=replaceable(overwrite)) as tmp:
            write_checkpoint(
                tmp,
                size=size,
                seed=seed,
                decoder=decoder,
                layout=layout,
                dtype=dtype,
                lm_head=lm_head,
                layers=layers,
                workers=min(2, os.cpu_count() or 1),
            )
        click.echo(f"wrote a random {size} checkpoint ({layout} layout) to {out}")
