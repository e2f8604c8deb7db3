"""Helpers for the hostile-input tests (issue 14 items 1-4): a snapshot of a directory tree to prove nothing was
written or deleted, a sentinel file whose access time proves it was never read, and re-signing an edited bundle
the way an attacker who can write the bundle would (fresh sha256 + sizes, so only the check under test stops it).
No huluexport import: the runtime tier uses these too."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): kind, size, mtime and content hash of files, link targets."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir",)
            else:
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


class Sentinel:
    """A file outside the job. Its atime is set before its mtime, so any read moves it (Linux relatime updates
    atime when it is older than mtime); `untouched()` is false once the file was read, written or removed."""

    def __init__(self, path: Path, content: bytes) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.content = content
        self.reset()
        # The mechanism itself must work here, or the test would prove nothing.
        probe = path.with_name(path.name + ".probe")
        probe.write_bytes(b"x")
        os.utime(probe, (1_000_000, 2_000_000))
        probe.read_bytes()
        read_moves_atime = os.stat(probe).st_atime != 1_000_000
        probe.unlink()
        assert read_moves_atime, f"{path.parent}: reads do not update atime here (noatime?); the sentinel is blind"

    def reset(self) -> None:
        os.utime(self.path, (1_000_000, 2_000_000))

    def untouched(self) -> bool:
        if not self.path.is_file():
            return False
        st = os.stat(self.path)  # before our own read below
        ok = st.st_atime == 1_000_000 and st.st_mtime == 2_000_000 and self.path.read_bytes() == self.content
        self.reset()  # our own read moved atime
        return ok


def resign(bundle: Path) -> None:
    """Recompute every listed file's sha256 and size in manifest.json (an attacker with write access can)."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    for rel, entry in m["files"].items():
        p = bundle / rel
        entry["bytes"] = p.stat().st_size
        entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    path.write_text(json.dumps(m, indent=1))


def edit_manifest(bundle: Path, dotted: str, value: object) -> None:
    """Set one manifest field ("dims.hidden", or "files/decoder.onnx" where a key has a dot) to `value` in place
    (the manifest itself is not hashed)."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    keys = dotted.split("/") if "/" in dotted else dotted.split(".")
    node = m
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    path.write_text(json.dumps(m))


def one_error_line(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single `error: ...` line of a refused command (exit `code`, no traceback)."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def run_module(
    module: str, *args: object, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, check=False)
