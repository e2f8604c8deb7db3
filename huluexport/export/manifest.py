"""Write a bundle's manifest.json: contract, dims and ranges, pieces, tokens, reduction, files + sha256, versions.

The reader (and the schema's one definition) is hulurt.manifest; every write is read back through it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from hulurt import manifest as rt
from hulurt.contract import CONTRACT_VERSION, OPS, to_json

from huluexport import __version__, progress
from huluexport.config import HuluConfig, to_dims
from huluexport.devices import Target
from huluexport.export.staging import MARKER

log = logging.getLogger(__name__)

TOOLS = (
    "torch",
    "onnx",
    "onnxscript",
    "onnx-ir",
    "onnxruntime",
    "numpy",
    "safetensors",
    "tokenizers",
    "tensorrt-rtx",
)


def tool_versions() -> dict[str, str]:
    out = {"huluexport": __version__}
    for name in TOOLS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def list_files(root: Path, *, exclude: tuple[str, ...] = (rt.MANIFEST, MARKER)) -> dict[str, rt.FileEntry]:
    """Every regular file under `root` but the manifest and the staging marker, hashed (advancing the caller's
    progress phase by each file's bytes)."""
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in exclude]
    step = progress.current()
    step.set_total(sum(p.stat().st_size for p in paths))
    files = {}
    for p in paths:
        rel = p.relative_to(root).as_posix()
        step.note(rel)
        files[rel] = rt.FileEntry(sha256=rt.sha256_file(p), bytes=p.stat().st_size)
        step.advance(files[rel].bytes)
    return files


def build_manifest(
    *,
    root: Path,
    cfg: HuluConfig,
    precision: str,
    target: Target,
    pieces: dict[str, rt.PieceEntry],
    tokenizer: rt.TokenizerFiles,
    max_new_tokens_default: int = 1024,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict; `files` lists every file under root (hashed now)."""
    dims = to_dims(cfg, rt.ACT_DTYPE[precision])
    ranges = target.ranges(cfg.decoder.max_position)
    t = cfg.tokens
    pre = cfg.preprocess
    contract = to_json(dims)
    return {
        "format": rt.FORMAT,
        "format_version": rt.FORMAT_VERSION,
        "contract_version": CONTRACT_VERSION,
        "huluexport_version": __version__,
        "precision": precision,
        "target": target.name,
        "dims": dataclasses.asdict(dims),
        "dim_ranges": {k: dataclasses.asdict(v) for k, v in ranges.items()},
        "pieces": {k: dataclasses.asdict(v) for k, v in pieces.items()},
        "contract": contract["pieces"],
        "ops": {k: dataclasses.asdict(v) for k, v in OPS.items()},
        "files": {k: dataclasses.asdict(v) for k, v in list_files(root).items()},
        "tokens": {
            "image": t.image,
            "endoftext": t.endoftext,
            "im_start": t.im_start,
            "im_end": t.im_end,
            "eos": list(t.eos),
            "pad": t.endoftext,
        },
        "reduction": dataclasses.asdict(cfg.reduction),
        "vision": {
            "patch": cfg.vision.patch,
            "merge_image": pre.image_merge,
            "merge_video": pre.video_merge,
            "rope_theta": cfg.vision.rope_theta,
            "head_dim": cfg.vision.head_dim,
            "hidden": cfg.vision.hidden,
        },
        "preprocess": {
            "min_tokens": pre.min_tokens,
            "max_tokens": pre.max_tokens,
            "image_mean": list(pre.image_mean),
            "image_std": list(pre.image_std),
            "fps": pre.fps,
            "max_frames": pre.max_frames,
        },
        "limits": {
            "max_context": ranges["total_len"].max,
            "max_new_tokens_default": max_new_tokens_default,
            "max_frames": ranges["n_frames"].max,
            "max_groups": ranges["n_groups"].max,
        },
        "tokenizer": dataclasses.asdict(tokenizer),
        "model": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "tools": tool_versions(),
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json, then read the bundle back through hulurt's strict reader (hashes included)."""
    path = root / rt.MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    rt.load_manifest(root, verify_hashes=False)
    log.info("manifest: %s (%d files)", path, len(manifest["files"]))
    return path
