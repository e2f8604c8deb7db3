"""Deterministic random weights for a config: what `build --random-weights` exports and fixtures store.

One rule for every parameter, keyed by (seed, reference name) so any tensor can be produced alone, in any
order, without materialising the rest (a 7B is built one tensor at a time):
matrices ~ N(0, 1/fan_in), norm weights ~ 1 + 0.1 N(0, 1), biases ~ 0.1 N(0, 1). The embedding is a matrix
too (std 1/sqrt(H)): with std 1 a tied lm_head would always predict the current token.
"""

from __future__ import annotations

import math
import zlib

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


def random_state(cfg: HuluConfig, seed: int = 0, lm_head: bool = True) -> dict[str, torch.Tensor]:
    """reference name -> float32 tensor for every parameter of cfg (without lm_head if lm_head is False)."""
    return {
        ref: random_tensor(ref, shape, seed)
        for ref, shape in parameter_shapes(cfg).items()
        if lm_head or ref != LM_HEAD
    }
