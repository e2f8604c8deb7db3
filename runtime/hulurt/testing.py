"""Synthetic inputs for testing and benchmarking the runtime's kernels (numpy only, never used by a request).

`near_threshold_volume` is the one volume the token-reduction tests (numpy oracle, ONNX graph form, CUDA kernel)
and benchmarks/token_reduce/ use: 8-bit frames where many tokens sit right at the reduction threshold, so a
rounding or accumulation-order difference between two implementations shows up as a different keep mask.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def near_threshold_volume(
    rng: np.random.Generator | int, frames: int, tokens: int, token_shape: tuple[int, ...] = (4, 588)
) -> NDArray[np.uint8]:
    """uint8 frames [frames, tokens, *token_shape]. Frame 0 is noise; from one frame to the next each token,
    one third each, stays (steps of +-2 levels), moves by up to +-24..27 levels (a mean |diff| of about
    0.094..0.106 on the [-1, 1] scale: around the default threshold 0.1), or is replaced by fresh noise.
    Normalise with hulurt.preprocess.NORM_LUT (the preprocessing's exact u8 -> [-1, 1] map)."""
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    shape = (tokens, *token_shape)
    per_token = (tokens,) + (1,) * len(token_shape)  # one class and amplitude per token, broadcast over it
    u8 = np.empty((frames, *shape), dtype=np.uint8)
    u8[0] = rng.integers(0, 256, size=shape)
    for i in range(1, frames):
        cls = rng.integers(0, 3, size=per_token)
        amp = np.where(cls == 0, 2.0, rng.uniform(24.0, 27.0, size=per_token))
        step = np.rint(rng.uniform(-1, 1, size=shape) * amp).astype(np.int64)
        moved = np.clip(u8[i - 1].astype(np.int64) + step, 0, 255)
        fresh = rng.integers(0, 256, size=shape)
        u8[i] = np.where(cls == 2, fresh, moved).astype(np.uint8)
    return u8
