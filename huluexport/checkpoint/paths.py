"""Every file a build reads from a checkpoint must resolve inside the checkpoint directory.

A weight index may name `../outside.safetensors` or an absolute path, a shard or side file may be a symlink to
somewhere else on the machine, and the original layout's config.json names a vision-encoder directory. All of
these go through `inside()`, which resolves symlinks first and refuses, in one line, what lands outside.
A snapshot in a Hugging Face cache is the one case where links leave the folder by design (into the same
repository's `blobs/`); `boundary_of` widens the boundary to that repository's cache folder, no further.
"""

from __future__ import annotations

from pathlib import Path

from huluexport.errors import CheckpointError


def root_of(ckpt_dir: str | Path) -> Path:
    """The checkpoint directory, resolved (it may itself be a symlink, e.g. a Hub cache snapshot)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory not found", file=d)
    return d.resolve()


def boundary_of(root: Path) -> Path:
    """The directory that resolved paths of checkpoint `root` must stay in: root itself, or, for a snapshot of
    a Hugging Face cache (`models--org--name/snapshots/<commit>/`, whose files link to `../../blobs/`), the
    cache folder of that one repository."""
    root = root.resolve()
    repo = root.parent.parent
    if root.parent.name == "snapshots" and repo.name.startswith("models--") and (repo / "blobs").is_dir():
        return repo
    return root


def inside(
    root: Path, rel: str | Path, *, named_by: str | Path | None = None, entry: str | None = None
) -> Path:
    """root / rel, resolved; CheckpointError unless it stays inside root.

    `named_by` is the file that named `rel` (an index, config.json) and `entry` the key it was named under;
    both go into the message so the user knows which line of which file to fix.
    """
    root = root.resolve()
    bound = boundary_of(root)
    target = (root / rel).resolve()  # an absolute rel replaces root here, and is then refused below
    if target == bound or bound in target.parents:
        return target
    where = f"{named_by}: " if named_by is not None else f"{root / rel}: "
    what = f"entry {entry!r} -> {str(rel)!r}" if entry is not None else f"{str(rel)!r}"
    raise CheckpointError(
        f"{where}{what} resolves to {target}, outside the checkpoint directory {bound}; refusing to read it",
        file=named_by if named_by is not None else root / rel,
        tensor=entry,
    )


def side_file(root: Path, name: str) -> Path | None:
    """A side file (tokenizer.json, ...) of the checkpoint if present, refused if it leads outside."""
    p = root / name
    if not p.exists() and not p.is_symlink():
        return None
    resolved = inside(root, name)
    return p if resolved.is_file() else None  # named as listed; checked to resolve inside
