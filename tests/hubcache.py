"""A Hugging Face Hub cache written the way huggingface_hub writes one, from a local checkpoint (no network)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REPO = "ZJU-AI4H/Hulu-Med-Tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(src: Path, cache: Path, repo: str = REPO, commit: str = COMMIT) -> Path:
    """Copy checkpoint `src` into `cache` the way huggingface_hub stores a download: content-addressed blobs,
    a snapshot folder of relative links to them, and refs/main naming the commit. Returns the snapshot."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo_dir / "blobs" / blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo_dir / "blobs" / blob, link.parent), link)
    return snap
