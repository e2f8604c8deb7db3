"""`huluexport run`: `python -m hulurt` with rich progress while the bundle loads and the inputs are read,
then the streamed answer and the timing line. Parses options and calls hulurt.api; no logic here."""

from __future__ import annotations

import sys
from pathlib import Path

import click

HELP = {
    "bundle": "Bundle directory written by `huluexport build`.",
    "prompt": "The question.",
    "image": "A 2-D image (PNG/JPEG/..., or one DICOM file); repeat for several.",
    "volume": "A 3-D volume: a NIfTI file or a directory holding one DICOM series.",
    "video": "A video file.",
    "max_new_tokens": "Most tokens to generate (default: the bundle's default, clamped to the context).",
    "temperature": "Sample with this temperature (default: greedy).",
    "top_k": "Sampling: keep the K most likely tokens (0 = off).",
    "top_p": "Sampling: nucleus probability mass (1.0 = off).",
    "repetition_penalty": "Penalty for tokens already in the sequence (1.0 = off).",
    "seed": "Sampling seed.",
    "no_token_reduction": "Keep every visual token of videos/volumes even if the bundle enables token reduction.",
    "threads": "Intra-op threads (0 = onnxruntime default).",
    "provider": "auto: TensorRT EP, then CUDA EP, then CPU; trt-native is the untested native TensorRT place holder.",
    "skip_hash_check": "Check file sizes only, not sha256 (faster for large bundles).",
}


def register(group: click.Group) -> None:
    from hulurt.backends.base import PROVIDERS

    @group.command("run")
    @click.argument("bundle", type=click.Path(path_type=Path))
    @click.option("--prompt", required=True, help=HELP["prompt"])
    @click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help=HELP["image"])
    @click.option("--volume", type=click.Path(path_type=Path), default=None, help=HELP["volume"])
    @click.option("--video", type=click.Path(path_type=Path), default=None, help=HELP["video"])
    @click.option("--max-new-tokens", type=int, default=None, help=HELP["max_new_tokens"])
    @click.option("--temperature", type=float, default=None, help=HELP["temperature"])
    @click.option("--top-k", type=int, default=0, show_default=True, help=HELP["top_k"])
    @click.option("--top-p", type=float, default=1.0, show_default=True, help=HELP["top_p"])
    @click.option(
        "--repetition-penalty", type=float, default=1.0, show_default=True, help=HELP["repetition_penalty"]
    )
    @click.option("--seed", type=int, default=None, help=HELP["seed"])
    @click.option("--no-token-reduction", is_flag=True, help=HELP["no_token_reduction"])
    @click.option("--threads", type=int, default=0, show_default=True, help=HELP["threads"])
    @click.option(
        "--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True, help=HELP["provider"]
    )
    @click.option("--skip-hash-check", is_flag=True, help=HELP["skip_hash_check"])
    def run(
        bundle: Path,
        prompt: str,
        images: tuple[Path, ...],
        volume: Path | None,
        video: Path | None,
        max_new_tokens: int | None,
        temperature: float | None,
        top_k: int,
        top_p: float,
        repetition_penalty: float,
        seed: int | None,
        no_token_reduction: bool,
        threads: int,
        provider: str,
        skip_hash_check: bool,
    ) -> None:
        """Answer PROMPT about text, images, a volume or a video with BUNDLE, streaming the answer."""
        from hulurt.api import load
        from hulurt.sampling import SamplingConfig
        from rich.console import Console

        sampling = (
            SamplingConfig(greedy=True, repetition_penalty=repetition_penalty)
            if temperature is None
            else SamplingConfig(
                greedy=False,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                seed=seed,
            )
        )
        err = Console(stderr=True)
        with err.status(f"checking {bundle} ({'sizes only' if skip_hash_check else 'sha256'})"):
            model = load(bundle, provider=provider, threads=threads, verify_hashes=not skip_hash_check)
        with err.status("reading and preprocessing inputs") as status:
            gen = model.stream(
                prompt,
                images=images,
                volume=volume,
                video=video,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                token_reduction=False if no_token_reduction else None,
            )
            status.update("vision encoder and prefill")
            pieces = iter(gen)
            first = next(pieces, "")
        sys.stdout.write(first)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        assert gen.timings is not None  # set when the iteration ends
        err.print(gen.timings.summary(), highlight=False, soft_wrap=True)
