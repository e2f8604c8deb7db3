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
from huluexport.errors import ExportError
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


def file_names(root: Path, *, exclude: tuple[str, ...] = (rt.MANIFEST, MARKER)) -> list[str]:
    """Every regular file under `root` but the manifest and the staging marker (relative, sorted)."""
    return [
        rel for p in sorted(root.rglob("*")) if p.is_file() and (rel := p.relative_to(root).as_posix()) not in exclude
    ]


def list_files(root: Path, *, exclude: tuple[str, ...] = (rt.MANIFEST, MARKER)) -> dict[str, rt.FileEntry]:
    """Every regular file under `root` but the manifest and the staging marker, hashed (advancing the caller's
    progress phase by each file's bytes)."""
    names = file_names(root, exclude=exclude)
    step = progress.current()
    step.set_total(sum((root / n).stat().st_size for n in names))
    files = {}
    for rel in names:
        step.note(rel)
        files[rel] = rt.FileEntry(sha256=rt.sha256_file(root / rel), bytes=(root / rel).stat().st_size)
        step.advance(files[rel].bytes)
    return files


def checked_files(root: Path, hashed: dict[str, rt.FileEntry]) -> dict[str, rt.FileEntry]:
    """`hashed` (file -> entry, computed while the files were written) in file order, after checking that it
    names exactly the files under root (every file listed, nothing listed that is not there) and their sizes."""
    names = file_names(root)
    missing, extra = sorted(set(names) - set(hashed)), sorted(set(hashed) - set(names))
    if missing or extra:
        raise ExportError(
            f"{root}: the manifest's file list does not match the directory: not hashed {missing or 'none'}, "
            f"hashed but absent {extra or 'none'}"
        )
    for n in names:
        size = (root / n).stat().st_size
        if hashed[n].bytes != size:
            raise ExportError(f"{root / n}: {size} bytes on disk; {hashed[n].bytes} when it was hashed")
    return {n: hashed[n] for n in names}


def build_manifest(
    *,
    root: Path,
    cfg: HuluConfig,
    precision: str,
    target: Target,
    pieces: dict[str, rt.PieceEntry],
    tokenizer: rt.TokenizerFiles,
    max_new_tokens_default: int = 1024,
    files: dict[str, rt.FileEntry] | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict; `files` lists every file under root: `files` when given (hashes
    computed while writing; checked to name exactly the files there), else hashed now."""
    listed = list_files(root) if files is None else checked_files(root, files)
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
        "files": {k: dataclasses.asdict(v) for k, v in listed.items()},
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
