"""Write safetensors files tensor by tensor, in bounded memory, with two threads: for checkpoints of any size.

`safetensors.torch.save_file` needs every tensor of a file in memory at once (a 5 GB shard of a 7B is 5 GB of
RSS, more with the float32 it is generated from). The format is simple enough to write as a stream: an 8-byte
little-endian header length, a JSON header naming each tensor's dtype, shape and [begin, end) byte offsets into
the data that follows, padded with spaces to a multiple of 8, then the raw little-endian tensor bytes without
gaps. Since every shape is known before any value exists, the header is written first, and each tensor's bytes
are written at its offset (os.pwrite) as they are produced, piece by piece. The header is laid out as
safetensors' own writer lays it out (metadata first, tensors sorted by name, compact JSON), so a file is
byte-identical to `save_file` of the same tensors; tests/unit/test_init_checkpoint.py checks that and reads
every shard back with `safetensors.safe_open`.

Parallel: `workers` threads take the next tensor from one shared list; making a piece (torch) and writing it
(os.pwrite) both release the GIL, so one thread generates while the other writes. Peak memory: the workers'
piece buffers (the `chunks` callable decides their size), not a tensor, a shard or the model.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_ALIGN = 8  # the header (with its 8-byte length) is padded to a multiple of 8 bytes

Chunks = Callable[[str, tuple[int, ...]], Iterator[torch.Tensor]]


@dataclass(frozen=True)
class _Job:
    fd: int
    name: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def header(
    tensors: Sequence[tuple[str, tuple[int, ...]]], dtype: torch.dtype, metadata: dict[str, str] | None = None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """(length + JSON header bytes, name -> (begin, end) within the data) for `tensors`, all of `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = metadata
    spans: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, shape in sorted(tensors):
        n = size
        for d in shape:
            n *= d
        entries[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        spans[name] = (pos, pos + n)
        pos += n
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text)) % _ALIGN)
    return struct.pack("<Q", len(text)) + text, spans


def write_files(
    files: dict[Path, Sequence[tuple[str, tuple[int, ...]]]],
    chunks: Chunks,
    dtype: torch.dtype,
    *,
    metadata: dict[str, str] | None = None,
    workers: int = 2,
    done: Callable[[int], None] | None = None,
) -> None:
    """Write each safetensors file of `files` (path -> [(tensor name, shape)]); `chunks(name, shape)` yields the
    tensor's values flattened, in pieces (any float dtype, cast to `dtype` here). Files must not exist.
    `done(nbytes)` is called after each piece is written, from the writer threads (a progress phase's advance)."""
    fds: list[int] = []
    jobs: list[_Job] = []
    try:
        for path, tensors in files.items():
            head, spans = header(tensors, dtype, metadata)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fds.append(fd)
            _pwrite_all(fd, head, 0)
            total = max((end for _, end in spans.values()), default=0)
            os.ftruncate(fd, len(head) + total)
            for name, shape in tensors:
                begin, end = spans[name]
                jobs.append(_Job(fd, name, tuple(shape), len(head) + begin, end - begin))
        _run(jobs, chunks, dtype, max(1, workers), done or _ignore)
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _ignore(nbytes: int) -> None:
    pass


def _run(jobs: list[_Job], chunks: Chunks, dtype: torch.dtype, workers: int, done: Callable[[int], None]) -> None:
    lock = threading.Lock()
    todo = iter(jobs)
    failed = threading.Event()

    def work() -> None:
        out: torch.Tensor | None = None  # this worker's cast buffer, reused
        while not failed.is_set():
            with lock:
                job = next(todo, None)
            if job is None:
                return
            try:
                out = _write_tensor(job, chunks, dtype, out, done)
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(workers, thread_name_prefix="safetensors-writer") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
        for f in futures:
            f.result()


def _write_tensor(
    job: _Job, chunks: Chunks, dtype: torch.dtype, out: torch.Tensor | None, done: Callable[[int], None]
) -> torch.Tensor | None:
    pos = job.offset
    for piece in chunks(job.name, job.shape):
        piece = piece.reshape(-1)
        if piece.dtype != dtype:
            if out is None or out.numel() < piece.numel():
                out = torch.empty(piece.numel(), dtype=dtype)
            piece = out[: piece.numel()].copy_(piece)
        raw = piece.contiguous().view(torch.uint8).numpy()
        _pwrite_all(job.fd, memoryview(raw), pos)
        pos += raw.nbytes
        done(raw.nbytes)
    if pos != job.offset + job.nbytes:
        raise RuntimeError(f"tensor {job.name!r}: wrote {pos - job.offset} bytes; its header says {job.nbytes}")
    return out


def _pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n
