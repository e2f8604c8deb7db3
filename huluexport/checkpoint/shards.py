"""Read tensors out of safetensors shards with one copy: the cast (or a clone) straight from the file mapping.

`safe_open(...).get_tensor` opens the file, copies the tensor's bytes out of its mapping into a new buffer and
closes it; a bf16 -> fp16 build then copies again to cast. Here each shard is mapped once (a bounded number stay
open, least recently used first out), the tensor is a zero-copy torch view of the mapping at the offsets of
the shard's header, and the one copy is the cast to the dtype the caller wants (or a clone when it is already
that dtype); torch runs it without the GIL, so two loader threads read and cast in parallel. The pages just
read are then dropped from this process's mapping (madvise DONTNEED: they stay in the page cache, the file is
not touched), so the process's resident size does not grow with the bytes read.

Headers were checked by the safetensors library when the checkpoint was planned
(huluexport/checkpoint/tensors.py); the offsets are checked again against the file size here.
"""

from __future__ import annotations

import collections
import json
import mmap
import os
import struct
import threading
from pathlib import Path

import torch

from huluexport.errors import CheckpointError

_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100 << 20  # safetensors' own limit
_PAGE = mmap.PAGESIZE


class _Shard:
    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: safetensors header of {n} bytes does not fit the file", file=path)
            header = json.loads(f.read(n))
            # ACCESS_COPY: a private mapping torch can view without a read-only warning; nothing writes to it
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        self.path, self.base, self.size = path, 8 + n, size
        self.header = header

    def view(self, name: str) -> tuple[torch.Tensor, int, int]:
        info = self.header.get(name)
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} missing or of an unsupported dtype", file=self.path,
                                  tensor=name)
        begin, end = (self.base + int(x) for x in info["data_offsets"])
        dtype = _DTYPES[info["dtype"]]
        shape = [int(d) for d in info["shape"]]
        count = 1
        for d in shape:
            count *= d
        if not self.base <= begin <= end <= self.size or (end - begin) != count * dtype.itemsize:
            raise CheckpointError(f"{self.path}: tensor {name!r} has offsets outside the file or of the wrong "
                                  "length", file=self.path, tensor=name)
        if count == 0 or self.map is None:
            return torch.empty(shape, dtype=dtype), begin, end
        return torch.frombuffer(self.map, dtype=dtype, count=count, offset=begin).view(shape), begin, end

    def drop(self, begin: int, end: int) -> None:
        """Release the pages of [begin, end) from this mapping (they are read again from the file if needed)."""
        start = begin - begin % _PAGE
        if self.map is not None and end > start:
            self.map.madvise(mmap.MADV_DONTNEED, start, end - start)


class ShardReader:
    """Tensors of safetensors files by (file, name), each mapping opened once; at most `max_open` stay open."""

    def __init__(self, max_open: int = 8) -> None:
        self._open: collections.OrderedDict[Path, _Shard] = collections.OrderedDict()
        self._max = max_open
        self._lock = threading.Lock()

    def _shard(self, path: Path) -> _Shard:
        with self._lock:
            shard = self._open.get(path)
            if shard is not None:
                self._open.move_to_end(path)
                return shard
        shard = _Shard(path)  # outside the lock: opening reads the header
        with self._lock:
            shard = self._open.setdefault(path, shard)
            self._open.move_to_end(path)
            while len(self._open) > self._max:
                self._open.popitem(last=False)  # its views keep the mapping alive until they are gone
            return shard

    def read(self, path: Path, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `name` of `path` in `dtype` (default: as stored), in memory of its own (one copy)."""
        shard = self._shard(path)
        view, begin, end = shard.view(name)
        try:
            return view.clone() if dtype is None or dtype == view.dtype else view.to(dtype)
        finally:
            del view
            shard.drop(begin, end)
