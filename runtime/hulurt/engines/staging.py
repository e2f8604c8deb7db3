"""A directory written whole or not at all (stdlib only; hulurt cannot import huluexport's staging module).

    with staged_dir(final, overwrite=False, marker="engines.json") as tmp:
        ... write files into tmp (a hidden sibling ".NAME.partial-XXXX") ...
    # success: tmp becomes `final` by rename; an existing `final` is replaced only with overwrite=True and only
    # if it holds `marker` (it is one of ours), and it is removed only after the new one is in place.
    # exception / Ctrl-C: tmp is removed, `final` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hulurt.errors import HuluRuntimeError


class StagingError(HuluRuntimeError):
    """The output directory exists and may not (or cannot) be replaced."""


def check_target(final: Path, overwrite: bool, marker: str) -> None:
    """Before any work: refuse an existing `final` unless overwrite and it holds `marker`."""
    if os.path.lexists(final):
        if not overwrite:
            raise StagingError(f"{final}: already exists; pass --overwrite to replace it")
        if final.is_symlink() or not final.is_dir() or not (final / marker).is_file():
            raise StagingError(
                f"{final}: --overwrite replaces only a directory this tool wrote (with {marker}); this is not one"
            )


@contextlib.contextmanager
def staged_dir(final: Path, *, overwrite: bool = False, marker: str) -> Iterator[Path]:
    final = Path(final)
    check_target(final, overwrite, marker)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the finished directory is as readable as the bundle
        yield tmp
        if not (tmp / marker).is_file():
            raise StagingError(f"{tmp}: the staged directory has no {marker}; nothing was moved into place")
        check_target(final, overwrite, marker)  # again: another process may have written it meanwhile
        old = None
        if os.path.lexists(final):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write a file through a temporary sibling and a rename (the timing cache, shared between builds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
