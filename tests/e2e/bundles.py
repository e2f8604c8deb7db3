"""Tiny bundles (and the tiny tokenizer) for the runtime's end-to-end and CLI tests: a random tiny checkpoint ->
`huluexport build`, cached on disk under artifacts/test-bundles/ keyed by a hash of the exporter's sources (a
build takes ~45 s on the 2-core CI machine, so one build serves every test process until the exporter
changes)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HULU_TEST_BUNDLES", ROOT / "artifacts" / "test-bundles"))
# (preset size, decoder flavour) of each tiny bundle
KINDS = {"qwen2": ("tiny", "qwen2"), "qwen3": ("tiny-qwen3", "qwen3")}


def _source_key() -> str:
    h = hashlib.sha256()
    hx = ROOT / "huluexport"
    files = sorted((hx / "export").rglob("*.py")) + sorted((hx / "reference").rglob("*.py")) + [
        *sorted((hx / "checkpoint").rglob("*.py")),
        hx / "config.py",
        ROOT / "runtime/hulurt/contract.py",
        ROOT / "runtime/hulurt/manifest.py",
        ROOT / "runtime/hulurt/prompt.py",
    ]
    for f in files:
        if f.is_file() and f.name not in ("tensorrt.py", "token_reduce.py"):
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def tokenizer() -> Path:
    """A folder with the tiny checkpoint's tokenizer.json + tokenizer_config.json (written by huluexport's
    fixture writer, so tests under tests/runtime get it without importing huluexport). Treat it as read-only."""

    def make(out: Path) -> None:
        from huluexport.checkpoint.fixtures import write_tokenizer

        write_tokenizer(out)

    return _cached("tokenizer", make)


def checkpoint(kind: str, compression: bool = True) -> Path:
    """The tiny random checkpoint of `kind` (cached like the bundles)."""
    return _cached(f"ckpt-{kind}-{int(compression)}", lambda out: _write_checkpoint(kind, compression, out))


def bundle(kind: str, compression: bool = True, gqa: bool = False, precision: str = "fp32") -> Path:
    """A tiny bundle of `kind` ("qwen2" | "qwen3") in `precision` (fp32, or fp16: the GPU tests, as onnxruntime
    has no fp32 GroupQueryAttention CUDA kernel), built from checkpoint(kind); `gqa`: with both decoder forms
    (decoder.onnx and the gqa-static decoder_gqa.onnx)."""
    ck = checkpoint(kind, compression)
    forms = ("v1-concat", "gqa-static") if gqa else ("v1-concat",)

    def make(out: Path) -> None:
        from huluexport.export.pipeline import BuildOptions, build

        build(BuildOptions(out=out, checkpoint=ck, precision=precision, decoder_forms=forms))

    stem = "bundle" if precision == "fp32" else f"bundle{precision}"  # globs must not overlap
    return _cached(f"{stem}-{'gqa-' if gqa else ''}{kind}-{int(compression)}", make)


DEEP_LAYERS = (5, 4)  # (decoder, vision) layers of the deep tiny models: deeper than the 3 layers build traces


def deep_checkpoint(kind: str) -> Path:
    """A tiny random checkpoint of `kind` with DEEP_LAYERS layers (the presets have 2), so that `build` clones
    layers (huluexport/export/passes/replicate_layers.py)."""

    def make(out: Path) -> None:
        import dataclasses

        from huluexport.checkpoint.fixtures import write_checkpoint
        from huluexport.config import preset

        size, flavour = KINDS[kind]
        base = preset(size)
        cfg = base.replace(decoder=dataclasses.replace(base.decoder, layers=DEEP_LAYERS[0]),
                           vision=dataclasses.replace(base.vision, layers=DEEP_LAYERS[1]))
        write_checkpoint(out, size=size, seed=3, decoder=flavour, cfg=cfg)

    return _cached(f"deepckpt-{kind}", make)


def deep_bundle(kind: str, trace_all_layers: bool, precision: str = "fp32") -> Path:
    """deep_checkpoint(kind) built with both decoder forms, by cloning layers (the default) or by tracing
    every layer (`trace_all_layers`, the old path)."""
    ck = deep_checkpoint(kind)

    def make(out: Path) -> None:
        from huluexport.export.pipeline import BuildOptions, build

        build(BuildOptions(out=out, checkpoint=ck, precision=precision, decoder_forms=("v1-concat", "gqa-static"),
                           trace_all_layers=trace_all_layers))

    return _cached(f"deepbundle-{kind}-{precision}-{'traced' if trace_all_layers else 'replicated'}", make)


def sliced_bundle(kind: str, layers: int) -> Path:
    """deep_checkpoint(kind) built as its first `layers` decoder layers and one vision layer (`build --layers N
    --vision-layers 1`), both decoder forms: the 2- and 4-layer slices from which scripts/gpu_bench.py
    extrapolates per-layer figures (tests/bench/test_gpu_bench_report.py)."""
    ck = deep_checkpoint(kind)

    def make(out: Path) -> None:
        from huluexport.export.pipeline import BuildOptions, build

        build(BuildOptions(out=out, checkpoint=ck, precision="fp32", layers=layers, vision_layers=1,
                           decoder_forms=("v1-concat", "gqa-static")))

    return _cached(f"slice{layers}-{kind}", make)


def _write_checkpoint(kind: str, compression: bool, out: Path) -> None:
    from huluexport.checkpoint.fixtures import write_checkpoint

    size, flavour = KINDS[kind]
    write_checkpoint(out, size=size, seed=0, decoder=flavour, use_token_compression=compression)


def _cached(name: str, make) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}-{_source_key()}"
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel pytest processes build once
        if not out.is_dir():
            # entries of other exporter sources: another checkout may still be using them (parallel worktrees
            # share one cache), so only those unused for a day are removed
            for old in CACHE.glob(f"{name}-*"):
                if time.time() - old.stat().st_mtime > 86400:
                    shutil.rmtree(old, ignore_errors=True)
            tmp = CACHE / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            make(tmp)
            os.replace(tmp, out)
        os.utime(out)  # marks it used
    return out


OVERFLOW_WEIGHT = "model.layers.0.mlp.down_proj.weight"


def overflow_checkpoint() -> Path:
    """checkpoint("qwen2") with OVERFLOW_WEIGHT scaled by 1e5: its residual stream passes fp16's largest value,
    65504, from layer 0 on (an fp16 build's logits are NaN; fp32 is unaffected)."""

    def make(out: Path) -> None:
        import json

        from safetensors.torch import load_file, save_file

        shutil.copytree(checkpoint("qwen2"), out, dirs_exist_ok=True)
        shard = out / json.loads((out / "model.safetensors.index.json").read_text())["weight_map"][OVERFLOW_WEIGHT]
        tensors = load_file(shard)
        tensors[OVERFLOW_WEIGHT] = tensors[OVERFLOW_WEIGHT] * 1e5
        save_file(tensors, shard, metadata={"format": "pt"})

    return _cached("ckpt-overflow", make)


def overflow_bundle(precision: str = "fp16") -> Path:
    """overflow_checkpoint() built with both decoder forms in `precision`."""

    def make(out: Path) -> None:
        from huluexport.export.pipeline import BuildOptions, build

        build(BuildOptions(out=out, checkpoint=overflow_checkpoint(), precision=precision,
                           decoder_forms=("v1-concat", "gqa-static")))

    return _cached(f"overflow-{precision}", make)


def copy_bundle(src: Path, dst: Path) -> Path:
    """A private copy a test may corrupt."""
    shutil.copytree(src, dst)
    return dst
