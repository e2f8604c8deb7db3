"""sha256 of a bundle's files while they are written, instead of reading the finished bundle again.

`save_hashed` saves a piece with ir.save (two loader threads: reading + casting the next tensors overlaps
writing) and hashes its external-data file as it grows. ir.save writes the tensors at known offsets, densely
packed in order, but with several workers out of order; each tensor reports its byte range once written, and
a follower thread hashes the file from the start up to the first range not yet written, reading back bytes the
kernel has just been given (page cache, no disk read). Whatever the follower has not reached when ir.save
returns (nothing, when the ranges are dense) is hashed then, so the digest is always that of the whole file.
The .onnx file is small and hashed after it is written.

`Background` runs hashes of other files (the checkpoint's, the side files') on one thread while the main thread
works: hashlib and file reads release the GIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx_ir as ir
from hulurt import manifest as rt

log = logging.getLogger(__name__)

_BLOCK = 8 << 20


class FollowingHash:
    """sha256 of a file being written at known offsets, following the written prefix from a thread."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pos = 0  # bytes hashed so far
        self._done: dict[int, int] = {}  # written ranges not yet hashed: start -> end
        self._fd: int | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bundle-hash", daemon=True)
        self._thread.start()

    def written(self, path: str, start: int, end: int) -> None:
        """The bytes [start, end) of `path` (the file being written) are final."""
        with self._cond:
            if self._fd is None:
                self._fd = os.open(path, os.O_RDONLY)  # the same inode after ir.save renames it into place
            self._done[start] = end
            self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pos in self._done or self._closing)
                    if self._pos not in self._done:
                        return
                    end = self._done.pop(self._pos)
                    fd = self._fd
                assert fd is not None
                self._read(fd, end)
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def _read(self, fd: int, end: int | None) -> None:
        while end is None or self._pos < end:
            n = _BLOCK if end is None else min(_BLOCK, end - self._pos)
            block = os.pread(fd, n, self._pos)
            if not block:
                if end is None:
                    return
                raise OSError(f"short read at byte {self._pos} of a bundle file being hashed")
            self._hash.update(block)
            self._pos += len(block)

    @property
    def hashed_bytes(self) -> int:
        """Bytes hashed so far (the follower's position)."""
        return self._pos

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop following (the write failed); errors of the follower are dropped with the file."""
        with contextlib.suppress(BaseException):
            self.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def finish(self, path: Path) -> rt.FileEntry:
        """The hash of the finished file at `path` (the rest of it read now, if the follower had not)."""
        self.stop()
        fd = self._fd if self._fd is not None else os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise RuntimeError(f"{path}: not the file that was hashed while it was written")
            self._read(fd, None)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if self._pos != size:
            raise RuntimeError(f"{path}: hashed {self._pos} bytes of {size}")
        return rt.FileEntry(sha256=self._hash.hexdigest(), bytes=size)


class _Tracked(ir.LazyTensor):
    """Wraps an initializer's tensor for one ir.save: reports the byte range it wrote to `follower`."""

    __slots__ = ("follower",)

    def tofile(self, file: Any) -> None:
        start = file.tell()  # ir.save seeks to the tensor's offset first
        super().tofile(file)
        file.flush()
        end = start + self.nbytes
        if file.tell() != end:
            raise RuntimeError(f"tensor {self.name!r}: wrote bytes {start}..{file.tell()}; expected {self.nbytes}")
        if end > start:
            self.follower.written(file.name, start, end)


def save_hashed(model: ir.Model, path: Path, data: str, **save_args: Any) -> dict[str, rt.FileEntry]:
    """ir.save(model, path, external_data=data, **save_args); returns {file name: FileEntry} of what it wrote
    (the .onnx, and the data file if any tensor went there). The bytes written are ir.save's own."""
    follower = FollowingHash()
    saved: dict[str, ir.TensorProtocol] = {}
    for name, value in model.graph.initializers.items():
        t = value.const_value
        if t is None:
            continue
        wrapped = _Tracked(lambda t=t: t, dtype=t.dtype, shape=t.shape, name=t.name,
                           doc_string=t.doc_string, metadata_props=dict(t.metadata_props) or None)
        wrapped.follower = follower
        saved[name] = t
        value.const_value = wrapped
    try:
        ir.save(model, path, external_data=data, **save_args)
    except BaseException:
        follower.abort()
        raise
    finally:
        for name, t in saved.items():
            model.graph.initializers[name].const_value = t
    out = {path.name: rt.FileEntry(sha256=rt.sha256_file(path, _BLOCK), bytes=path.stat().st_size)}
    data_path = path.parent / data
    if data_path.exists():
        during = follower.hashed_bytes
        out[data] = follower.finish(data_path)
        log.info("%s: %.2f of %.2f GB hashed while it was written", data, during / 1e9, out[data].bytes / 1e9)
    else:
        follower.stop()
    return out


class Background:
    """One worker thread hashing files while the caller works. `close()` stops a hash in progress at its next
    block and drops the queued ones (a failed build does not wait for gigabytes of checkpoint to be hashed)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hash")
        self._stop = threading.Event()

    def file(self, path: Path) -> Future:
        """A Future of the FileEntry of `path`."""
        return self._pool.submit(self._hash, path)

    def _hash(self, path: Path) -> rt.FileEntry:
        t0, c0 = time.perf_counter(), time.thread_time()
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                if self._stop.is_set():
                    raise RuntimeError(f"{path}: hashing stopped")
                h.update(block)
                size += len(block)
        log.info("hashed %s (%.2f GB) in the background: %.1f s, %.1f s CPU", path.name, size / 1e9,
                 time.perf_counter() - t0, time.thread_time() - c0)
        return rt.FileEntry(sha256=h.hexdigest(), bytes=size)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def copy_hashed(src: Path, dst: Path) -> rt.FileEntry:
    """Copy src to dst (contents and mode, as shutil.copy2 without the times), hashing the bytes on the way."""
    h, size = hashlib.sha256(), 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while block := fi.read(_BLOCK):
            h.update(block)
            fo.write(block)
            size += len(block)
    shutil.copymode(src, dst)
    return rt.FileEntry(sha256=h.hexdigest(), bytes=size)
