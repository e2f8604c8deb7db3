"""`--checkpoint` as a local folder or a Hugging Face Hub repo id, and what a bundle records about it.

A folder is used as it is. A repo id (`org/name`) resolves through huggingface_hub's cache: a cached snapshot
of the revision is used without any network call; otherwise, unless offline mode is on (`offline=True` or
HF_HUB_OFFLINE=1), the files a build reads are downloaded into the cache. With no cached copy and no network,
one line says what to run to download it.

The record written into a bundle's manifest names no path of the building machine: the repo id and the
commit (or only the folder's name), and the sha256 of every checkpoint file the build read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huluexport import progress
from huluexport.checkpoint.paths import inside, root_of, side_file
from huluexport.checkpoint.tensors import weight_files
from huluexport.errors import ConfigError

log = logging.getLogger(__name__)

# What a build reads from a repository: configs, index, safetensors shards, tokenizer and templates.
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja")
# Files besides the weights that a build reads (and so hashes): huluexport.export.pipeline.SIDE_FILES + config
READ_SIDE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
)
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Located:
    """A checkpoint directory to read, and where it came from (JSON-ready, no local paths)."""

    path: Path
    source: dict[str, str] = field(default_factory=dict)


def offline_mode(offline: bool | None = None) -> bool:
    """--offline, else HF_HUB_OFFLINE as huggingface_hub reads it (1/true/yes/on)."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_repo_id(spec: str) -> bool:
    return _REPO_ID.fullmatch(spec) is not None and ".." not in spec


def download_hint(repo_id: str, revision: str | None, cache_dir: Path | None) -> str:
    cmd = f"hf download {repo_id}"
    if revision:
        cmd += f" --revision {revision}"
    if cache_dir is not None:
        cmd += f" --cache-dir {cache_dir}"
    return cmd


def locate(
    spec: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> Located:
    """The directory `--checkpoint spec` names: an existing folder, or a Hub repo id via the cache."""
    text = str(spec)
    p = Path(spec)
    if p.is_dir():
        if revision is not None:
            raise ConfigError(f"--revision {revision}: applies to a Hub repo id; {text} is a local folder")
        root = root_of(p)
        return Located(root, {"folder": root.name})
    if p.exists():
        raise ConfigError(f"--checkpoint {text}: is a file; expected a checkpoint folder or a Hub repo id")
    if not is_repo_id(text):
        raise ConfigError(f"--checkpoint {text}: no such folder, and not a Hub repo id (org/name)")
    if cache_dir is None and os.environ.get("HF_HUB_CACHE"):  # read per call, not at import time
        cache_dir = os.environ["HF_HUB_CACHE"]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    path = _snapshot(text, revision, cache, offline_mode(offline))
    commit = path.name if _COMMIT.fullmatch(path.name) else ""
    source = {"repo_id": text, "revision": commit or (revision or "main")}
    if revision is not None and revision != commit:
        source["requested_revision"] = revision
    log.info("checkpoint %s at %s: %s", text, source["revision"], path)
    return Located(path, source)


def _snapshot(repo_id: str, revision: str | None, cache: Path | None, offline: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hint = download_hint(repo_id, revision, cache)
    rev = revision or "main"
    args: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache,
        "allow_patterns": list(DOWNLOAD_PATTERNS),
    }
    try:  # the local cache first: no network call at all when the revision is there
        return Path(snapshot_download(repo_id, local_files_only=True, **args))
    except IncompleteSnapshotError:  # an interrupted download: the cached listing shows missing files
        if offline:
            raise ConfigError(
                f"--checkpoint {repo_id}: the cached copy of revision {rev} is incomplete and offline mode is "
                f"on; complete it with: {hint}"
            ) from None
    except LocalEntryNotFoundError:
        if offline:
            raise ConfigError(
                f"--checkpoint {repo_id}: revision {rev} is not in the Hugging Face cache and offline mode is "
                f"on; download it first with: {hint}"
            ) from None
    log.info("%s: not cached; downloading %s", repo_id, ", ".join(DOWNLOAD_PATTERNS))
    try:
        return Path(snapshot_download(repo_id, **args))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ConfigError(
            f"--checkpoint {repo_id}: not found on the Hub, or gated for this account ({_first_line(exc)})"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(f"--revision {rev}: no such revision of {repo_id} on the Hub") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ConfigError(
            f"--checkpoint {repo_id}: not in the Hugging Face cache and the Hub is not reachable "
            f"({_first_line(exc)}); download it where there is network with: {hint}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def sha256_of(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_files(ckpt_dir: Path) -> list[str]:
    """Every file a build reads from the checkpoint (weights, index, config, side files), relative, sorted."""
    root = root_of(ckpt_dir)
    index, files = weight_files(root)
    names = {f.relative_to(root).as_posix() for f in files.values()}
    if index is not None:
        names.add(index.name)
    names.update(n for n in READ_SIDE_FILES if side_file(root, n) is not None)
    return sorted(names)


def file_hashes(ckpt_dir: Path, names: list[str] | None = None) -> dict[str, str]:
    """name -> sha256 of `names` (default: every file a build reads, `read_files`), advancing the caller's
    progress phase ("hash checkpoint") by bytes, one file at a time."""
    root = root_of(ckpt_dir)
    names = read_files(root) if names is None else names
    step = progress.current()
    step.set_total(sum(inside(root, n).stat().st_size for n in names))
    out = {}
    for n in sorted(names):
        step.note(n)
        out[n] = sha256_of(inside(root, n))
        step.advance(inside(root, n).stat().st_size)
    return out


def recorded(located: Located, hashes: dict[str, str]) -> dict[str, Any]:
    """The manifest's `model.weights.source` and `files` for a checkpoint build."""
    return {"source": dict(located.source), "files": hashes}


def recorded_checkpoint(weights: dict[str, Any], bundle: Path, override: str | Path | None = None) -> Path:
    """The checkpoint directory to rebuild a bundle's reference from: `override` (--checkpoint, a folder or a
    repo id), else the manifest's record (a Hub repo at its commit, from the cache), else, for bundles written
    before the record existed, the absolute path they stored if it is a folder here."""
    if override is not None:
        return locate(override).path
    old = weights.get("checkpoint")
    if not weights.get("source") and isinstance(old, str) and Path(old).is_dir():
        return Path(old)
    return locate_recorded(weights, bundle).path


def locate_recorded(weights: dict[str, Any], bundle: Path, *, cache_dir: str | Path | None = None) -> Located:
    """The checkpoint a bundle was built from, found again from its manifest record (verify, bench)."""
    source = weights.get("source") or {}
    if isinstance(source, dict) and isinstance(source.get("repo_id"), str):
        revision = source.get("revision")
        return locate(
            source["repo_id"],
            revision=revision if isinstance(revision, str) else None,
            cache_dir=cache_dir,
            offline=True,
        )
    name = source.get("folder") if isinstance(source, dict) else None
    raise ConfigError(
        f"{bundle}: the bundle was built from the local folder {name or '(unrecorded)'!s}, which the manifest "
        "does not locate; pass --checkpoint DIR"
    )
