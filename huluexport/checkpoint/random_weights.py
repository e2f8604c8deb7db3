"""Deterministic random weights for a config: what `build --random-weights` exports and fixtures store.

One rule for every parameter, keyed by (seed, reference name) so any tensor can be produced alone, in any
order, without materialising the rest (a 7B is built one tensor at a time):
matrices ~ N(0, 1/fan_in), norm weights ~ 1 + 0.1 N(0, 1), biases ~ 0.1 N(0, 1). The embedding is a matrix
too (std 1/sqrt(H)): with std 1 a tied lm_head would always predict the current token.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import torch

from huluexport.checkpoint.layout import parameter_shapes
from huluexport.checkpoint.names import LM_HEAD
from huluexport.config import HuluConfig


def random_tensor(ref: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 tensor for reference name `ref`, the same for the same (ref, shape, seed) on every machine."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(ref.encode()))
    leaf = ref.rsplit(".", 1)[-1]
    if "norm" in ref and leaf == "weight":  # RMSNorm, LayerNorm (layer_norm1/2, post_layernorm), q/k_norm
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if leaf == "bias":
        return 0.1 * torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))


# torch's CPU normal fill draws one uniform per element and transforms blocks of 16, recomputing the last 16
# only at the end of the tensor: chunks of a multiple of 16 elements (none shorter than 16) drawn in turn from
# one generator give exactly the values of one draw (tests/unit/test_init_checkpoint.py checks it).
_BLOCK = 16


def random_chunks(ref: str, shape: tuple[int, ...], seed: int, chunk: int = 1 << 24) -> Iterator[torch.Tensor]:
    """`random_tensor(ref, shape, seed)` flattened, in float32 pieces of at most `chunk` elements (rounded to a
    multiple of 16), equal value for value, so a tensor of any size is made in bounded memory. Each piece is
    a view of one reused buffer: use it before asking for the next."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(ref.encode()))
    leaf = ref.rsplit(".", 1)[-1]
    n = math.prod(shape)
    step = max(_BLOCK, chunk - chunk % _BLOCK)
    buf = torch.empty(min(n, step + _BLOCK))
    start = 0
    while start < n:
        size = n - start if n - start < step + _BLOCK else step  # never leave a tail shorter than 16
        piece = buf[:size]
        piece.normal_(generator=gen)  # what torch.randn(shape, generator=gen) does for the whole tensor
        if "norm" in ref and leaf == "weight":
            piece.mul_(0.1).add_(1.0)
        elif leaf == "bias":
            piece.mul_(0.1)
        else:
            piece.div_(math.sqrt(math.prod(shape[1:])))
        yield piece
        start += size


def random_state(cfg: HuluConfig, seed: int = 0, lm_head: bool = True) -> dict[str, torch.Tensor]:
    """reference name -> float32 tensor for every parameter of cfg (without lm_head if lm_head is False)."""
    return {
        ref: random_tensor(ref, shape, seed)
        for ref, shape in parameter_shapes(cfg).items()
        if lm_head or ref != LM_HEAD
    }
