"""Writing an output directory (`build`, `quantize`, engine builds) without touching anything outside the job.

One place for the rules every command that writes a bundle follows:

    check_out(out, inputs, overwrite)   before any work: what --out may be (see README "Overwrite rules")
    with staged(out, inputs, overwrite) as tmp:
        ... write the bundle into tmp ...   # a hidden sibling `.NAME.partial-XXXX` holding our marker file
    # on success tmp is moved into place atomically (an old bundle is replaced last); on an exception,
    # Ctrl-C, SIGTERM or SIGHUP tmp is removed. A SIGKILL or power cut leaves it: the next run for the same
    # --out removes such stale stagings (ours only: name pattern + our marker + no live process holding it).

--overwrite replaces only a bundle: a directory whose manifest.json hulurt.manifest can read as a huluexport
bundle, holding nothing but the files that manifest lists (or an empty directory). Never the input, a directory
that contains the input, a plain file, a symbolic link, or a directory of other files. Refusals are ConfigError
naming --out (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hulurt import manifest as rt
from hulurt.errors import ManifestError

from huluexport.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = ".huluexport-staging"  # written first into every staging directory; never part of a finished bundle
_TOOL = "huluexport"
# Directory entries looked at when deciding whether --out is a bundle we may replace. A bundle holds about a
# dozen files; a directory with more is not one of ours and is refused without reading it all.
_MAX_ENTRIES = 10_000


def _abs(p: str | os.PathLike[str]) -> Path:
    """Absolute, `..` and symlinks of the parents resolved, the last component itself kept as named."""
    p = Path(os.path.abspath(os.fspath(p)))
    return p.parent.resolve() / p.name if p.name else p.resolve()


def _refuse(out: Path, why: str) -> ConfigError:
    return ConfigError(f"--out {out}: {why}")


def _bundle_files(out: Path) -> set[str]:
    """The relative paths a bundle at `out` is made of (manifest.json + every listed file); ConfigError if `out`
    is not a huluexport bundle or holds anything else."""
    try:
        raw = rt.read_manifest_json(out)
    except ManifestError as exc:
        raise _refuse(out, f"--overwrite replaces only a huluexport bundle, and this is not one ({exc})") from None
    files = raw.get("files")
    if raw.get("format") != rt.FORMAT or not isinstance(files, dict):
        raise _refuse(out, f"--overwrite replaces only a huluexport bundle; {out / rt.MANIFEST} is not a "
                      f"huluexport manifest (no format {rt.FORMAT!r} with a 'files' table)")
    return {rt.MANIFEST, *(str(k) for k in files)}


def _check_replaceable(out: Path) -> None:
    """`out` exists and --overwrite was given: it must be a bundle directory and nothing but."""
    st = os.lstat(out)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(out, "is a symbolic link; --overwrite replaces only a bundle directory, not what a link "
                      "points to. Remove the link or choose another --out")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(out, "is a file, not a bundle directory; --overwrite replaces only a huluexport bundle. "
                      "Remove it yourself or choose another --out")
    if not any(os.scandir(out)):
        return  # an empty directory (made for the bundle beforehand) holds nothing to lose
    listed = _bundle_files(out)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(out):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            seen += 1
            if seen > _MAX_ENTRIES:
                raise _refuse(out, f"holds more than {_MAX_ENTRIES} entries; that is not a bundle. Choose "
                              "another --out")
            rel = Path(dirpath, name).relative_to(out).as_posix()
            if rel not in listed:
                raise _refuse(out, f"holds {rel!r}, which its manifest.json does not list; --overwrite replaces "
                              "only a bundle and nothing else. Move that file away or choose another --out")


def check_out(out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = (), *,
              overwrite: bool = False, replaceable: Callable[[Path], None] | None = None) -> Path:
    """Validate --out before any work; returns it absolute. ConfigError (one line naming --out) otherwise."""
    shown = Path(out)
    target = _abs(out)
    if target == Path(target.anchor):
        raise _refuse(shown, "is the filesystem root; choose a new directory for the bundle")
    for inp in inputs:
        src = Path(inp).resolve()
        if target.resolve() == src:
            raise _refuse(shown, f"is the input {inp}; write the bundle to a new directory")
        if src.is_relative_to(target.resolve()):
            raise _refuse(shown, f"contains the input {inp}; write the bundle to a new directory outside it")
        if target.is_relative_to(src):
            raise _refuse(shown, f"is inside the input {inp}; write the bundle to a directory outside it")
    if os.path.lexists(target):
        if Path.cwd().resolve().is_relative_to(target.resolve()):
            raise _refuse(shown, "is (or contains) the current directory; run from elsewhere or choose another --out")
        if not overwrite:
            raise _refuse(shown, "already exists; pass --overwrite to replace it (only a huluexport bundle is "
                          "replaced) or choose another --out")
        (replaceable or _check_replaceable)(target)
    elif not target.parent.is_dir() and target.parent.exists():
        raise _refuse(shown, f"its parent {target.parent} is not a directory")
    return target


# --------------------------------------------------------------------------------------------------
# Staging directory, marker, stale clean-up
# --------------------------------------------------------------------------------------------------


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _marker_owner(d: Path, out: Path) -> int | None:
    """An open fd locking `d`'s marker when `d` is a stale staging of `out` made by us; None otherwise."""
    try:
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            return None
        fd = os.open(d / MARKER, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None  # no marker (or a link in its place): not ours
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size > 4096:
            raise ValueError("not a marker")
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
        if not (isinstance(info, dict) and info.get("tool") == _TOOL and info.get("out") == str(out)):
            raise ValueError("marker of another output")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live build: not stale
    except (OSError, ValueError):
        os.close(fd)
        return None
    return fd


def remove_stale(out: Path) -> list[Path]:
    """Remove `.NAME.partial-*` siblings of `out` that an earlier, dead run of ours left (marker + lock free)."""
    removed = []
    parent = out.parent
    if not parent.is_dir():
        return removed
    prefix = _partial_prefix(out)
    with os.scandir(parent) as it:
        candidates = [Path(e.path) for e in it if e.name.startswith(prefix)]
    for d in candidates:
        fd = _marker_owner(d, out)
        if fd is None:
            continue
        try:
            shutil.rmtree(d)  # never follows symlinks inside
            removed.append(d)
            log.warning("removed %s, left by an interrupted run for %s", d, out)
        except OSError as exc:
            log.warning("could not remove the stale staging directory %s: %s", d, exc)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit(128 + signum) while staging, so the `finally` below cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def staged(out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = (), *,
           overwrite: bool = False, replaceable: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield an empty hidden staging directory next to `out`; move it to `out` when the block completes.

    `replaceable(out)` raises ConfigError when an existing `out` may not be replaced (checked before the work
    and again before the move); the default accepts only a huluexport bundle (see the module docstring)."""
    target = check_out(out, inputs, overwrite=overwrite, replaceable=replaceable)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_partial_prefix(target), dir=target.parent))
    fd = -1
    try:
        with _signals_raise():
            fd = os.open(tmp / MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until we finish: a later run sees we are alive
            info = {"tool": _TOOL, "out": str(target), "pid": os.getpid(), "host": socket.gethostname()}
            os.write(fd, json.dumps(info).encode("utf-8"))
            yield tmp
            os.unlink(tmp / MARKER)
            _move_into_place(tmp, target, overwrite, shown=Path(out), replaceable=replaceable)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _move_into_place(tmp: Path, out: Path, overwrite: bool, shown: Path,
                     replaceable: Callable[[Path], None] | None = None) -> None:
    """Atomic on one filesystem: the bundle appears complete or not at all; an old bundle is replaced last.
    The --out rules are checked again: something may have appeared at `out` while we worked."""
    if os.path.lexists(out):
        if not overwrite:
            raise _refuse(shown, "appeared while the bundle was written; pass --overwrite to replace it")
        (replaceable or _check_replaceable)(out)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old, out)  # put the old bundle back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, out)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise _refuse(shown, "appeared while the bundle was written; pass --overwrite") from None
            raise
    with contextlib.suppress(OSError):
        os.chmod(out, 0o755)  # mkdtemp makes 0700
