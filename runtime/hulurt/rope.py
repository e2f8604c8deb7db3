"""Host table of the vision encoder's 2-D RoPE: cos/sin [n_patches, head_dim] float32 for one grid.

docs/model.md §4.2: rotary dim r = head_dim/2; omega_k = theta^(-2k/r), k < r/2; a patch at patch-grid
(y, x) gets angle [y*omega, x*omega] (r values), repeated twice over the head. Tokens are listed in the
merge-grouped order of docs/model.md §3.5, coordinates restart per frame (one table serves every frame).
Ported in our own words from ZJUI-AI4H/Hulu-Med src/hulumed/model/hulumed_encoder/modeling_hulumed_encoder.py
(VisionRotaryEmbedding + rot_pos_emb).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

VISION_ROPE_THETA = 10000.0


def _check(gh: int, gw: int, merge: int, head_dim: int) -> None:
    if merge not in (1, 2):
        raise ValueError(f"merge size must be 1 or 2; got {merge}")
    if gh <= 0 or gw <= 0 or gh % merge or gw % merge:
        raise ValueError(f"grid (gh, gw) = ({gh}, {gw}) must be positive and divisible by merge {merge}")
    if head_dim <= 0 or head_dim % 4:
        raise ValueError(f"vision head_dim must be a positive multiple of 4; got {head_dim}")


def token_coords(gh: int, gw: int, merge: int) -> NDArray[np.int64]:
    """(y, x) patch coordinates [gh*gw, 2] in merge-grouped token order (blocks raster, m*m inside)."""
    _check(gh, gw, merge, 4)
    m = merge
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.int64), np.arange(gw, dtype=np.int64), indexing="ij")
    grid = np.stack([ys, xs], axis=-1)  # (gh, gw, 2)
    grid = grid.reshape(gh // m, m, gw // m, m, 2)  # (bi, mi, bj, mj, 2)
    grid = grid.transpose(0, 2, 1, 3, 4)  # (bi, bj, mi, mj, 2)
    return np.ascontiguousarray(grid.reshape(gh * gw, 2))  # (n, 2)


def inv_freq(head_dim: int, theta: float = VISION_ROPE_THETA) -> NDArray[np.float32]:
    """omega_k = 1 / theta^(2k/r) for k = 0..r/2-1 with r = head_dim/2, computed in float32."""
    r = head_dim // 2
    exponent = np.arange(0, r, 2, dtype=np.float32) / np.float32(r)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def rope_angles(
    gh: int, gw: int, merge: int, head_dim: int, theta: float = VISION_ROPE_THETA
) -> NDArray[np.float32]:
    """Angles [n, head_dim] = concat([y*omega, x*omega], [y*omega, x*omega]) in float32."""
    _check(gh, gw, merge, head_dim)
    coords = token_coords(gh, gw, merge).astype(np.float32)  # (n, 2)
    w = inv_freq(head_dim, theta)  # (r/2,)
    ang = coords[:, :, None] * w[None, None, :]  # (n, 2, r/2)
    half = ang.reshape(coords.shape[0], -1)  # (n, r): [y*omega..., x*omega...]
    return np.concatenate([half, half], axis=1).astype(np.float32)  # (n, head_dim)


@lru_cache(maxsize=64)
def _table(
    gh: int, gw: int, merge: int, head_dim: int, theta: float
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    ang = rope_angles(gh, gw, merge, head_dim, theta)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


def vision_rope(
    gh: int, gw: int, merge: int, head_dim: int, theta: float = VISION_ROPE_THETA
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(cos, sin), each [gh*gw, head_dim] float32 (read-only, cached per grid): the vision graph's inputs."""
    return _table(int(gh), int(gw), int(merge), int(head_dim), float(theta))
