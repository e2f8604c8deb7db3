"""The decoder's KV cache for one request: sized once for the request's maximum context, then grown step by
step from the decoder's `present.{i}.key/value` outputs (contract: past [1, kv, past_len, d] in,
present [1, kv, past_len + seq_len, d] out).

Strategies (the decoder graph concatenates past and new rows itself, so truly in-place writes would need a
static-cache graph, which contract v1 does not have):
- "buffer" (CPU default): K/V buffers of [1, kv_heads, max_len, head_dim] per layer allocated once; each step
  copies only the new rows of `present` into them in place, and the next step reads a view of the first
  `length` rows. onnxruntime on CPU makes that strided view contiguous when it binds it (one copy per step);
  decode speed equals "chain" within the noise of benchmarks/results/runtime.md.
- "chain": the `present` arrays onnxruntime just returned become the next step's `past` unchanged (no host
  copy by us).
- "device" (GPU providers, IO binding): like "chain" but the arrays are OrtValues that never leave the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.contract import kv_names
from hulurt.errors import ContextLengthError, ContractError

STRATEGIES = ("buffer", "chain", "device")


@dataclass(frozen=True)
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"

    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * np.dtype(self.dtype).itemsize


class KVCache:
    def __init__(self, shape: KVShape, max_len: int, strategy: str = "buffer") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"KV cache strategy {strategy!r}; expected one of {STRATEGIES}")
        if max_len < 1:
            raise ContextLengthError(f"KV cache needs a maximum length >= 1; got {max_len}")
        self.shape = shape
        self.max_len = max_len
        self.strategy = strategy
        self.length = 0
        self.past_names, self.present_names = kv_names(shape.layers)
        dt = np.dtype(shape.dtype)
        full = (1, shape.kv_heads, max_len, shape.head_dim)
        empty = (1, shape.kv_heads, 0, shape.head_dim)
        self._buffers: list[NDArray[Any]] = []
        if strategy == "buffer":
            # one allocation per tensor for the whole request, never resized
            self._buffers = [np.zeros(full, dtype=dt) for _ in self.past_names]
        self._held: list[Any] = [np.zeros(empty, dtype=dt) for _ in self.past_names]

    @property
    def nbytes_max(self) -> int:
        """Bytes the cache occupies at its maximum length (what the request reserves)."""
        return self.max_len * self.shape.bytes_per_token()

    def set_device_empty(self, make: Any) -> None:
        """For the "device" strategy: replace the host zero-length pasts with device ones (`make(shape, dtype)`)."""
        empty = (1, self.shape.kv_heads, 0, self.shape.head_dim)
        self._held = [make(empty, np.dtype(self.shape.dtype)) for _ in self.past_names]

    def feeds(self) -> dict[str, Any]:
        """past_key_values.{i}.key/value for the next decoder call."""
        if self.strategy == "buffer":
            return {n: b[:, :, : self.length, :] for n, b in zip(self.past_names, self._buffers)}
        return dict(zip(self.past_names, self._held))

    def check_room(self, seq_len: int) -> None:
        if self.length + seq_len > self.max_len:
            raise ContextLengthError(
                f"KV cache holds {self.length} tokens and {seq_len} more were fed; its maximum is {self.max_len}"
            )

    def update(self, outputs: dict[str, Any], seq_len: int) -> None:
        """Take this step's present.{i}.key/value (numpy, or OrtValues for "device") covering length + seq_len."""
        self.check_room(seq_len)
        total = self.length + seq_len
        for j, name in enumerate(self.present_names):
            if name not in outputs:
                raise ContractError(f"decoder output {name!r} is missing; contract v1 requires present.{{i}}.key/value")
            value = outputs[name]
            got = value.shape() if callable(getattr(value, "shape", None)) else value.shape
            if int(got[2]) != total:
                raise ContractError(
                    f"decoder output {name!r} has total_len {got[2]}; expected past_len {self.length} + "
                    f"seq_len {seq_len} = {total}"
                )
            if self.strategy == "buffer":
                # [1, kv, total, d]: copy only the new rows [length, total) into the preallocated buffer
                self._buffers[j][:, :, self.length : total, :] = value[:, :, self.length : total, :]
            else:
                self._held[j] = value
        self.length = total
