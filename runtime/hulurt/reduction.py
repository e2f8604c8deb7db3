"""Token reduction (inter-frame pixel-difference pruning): the numpy oracle every other form is tested against.

Rule (docs/model.md §6.2; ported from ZJUI-AI4H/Hulu-Med src/hulumed/model/hulumed_arch.py
`_get_compression_mask`, same in the HF-version modeling file): for one video/volume input viewed as
[T, nb, D] (nb merged tokens per frame, D = m*m*588 raw normalised pixels of one merged token), a token
of frame t >= 1 is kept iff mean_D |x[t] - x[t-1]| > threshold; frame 0 is kept whole; a frame with
fewer than `min_tokens` kept tokens gets its first `min_tokens` tokens kept.

Arithmetic, stated once so the CUDA kernel and the ONNX graph form can match bit for bit:
- mode "bf16" (upstream: pixel_values are cast to bf16 before the model): pixels rounded to bf16;
  the difference rounded to bf16; |.|; sum accumulated exactly; mean = fp32(sum) / fp32(D) rounded to
  bf16; then x255 -> bf16, /255 -> bf16 (upstream's scale round trip); compared with bf16(threshold).
- mode "fp32": difference in fp32; sum accumulated exactly; mean = fp32(sum) / fp32(D); compared with
  fp32(threshold).
"Exactly": the oracle sums in float64. For pixels that come from 8-bit images (u8/127.5 - 1) every |diff|
is a multiple of 2^-32 below 2, so the float64 sum of <= 2352 of them is exact and independent of order.
In bf16 mode every |diff| is a multiple of 2^-15, so any fp32 accumulation order is exact as long as the
sum stays below 2^9 = 512 -- which covers every sum near a threshold of 0.1 (0.1 * 2352 = 235); larger sums
are far above the threshold whatever their rounding. The float32 conversion of the sum is the first rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

MODES = ("bf16", "fp32")


def round_bf16(x: NDArray[np.floating]) -> NDArray[np.float32]:
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32. NaN stays NaN."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    bits = x32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x32), x32, out)


# Values (frames x tokens x D) per pass of frame_token_diffs. The bf16 rounding holds a few uint64 temporaries
# of its operand (8 bytes a value): over a whole 160-slice 512x512 CT at once (16000 tokens x 2352, 144 MiB of
# fp32) the keep mask allocated 1.4 GiB at its peak, more than a 16-frame vision call; in passes of 4M values,
# about the input's size (benchmarks/results/volume_memory.md, section 3).
DIFF_PASS_VALUES = 1 << 22


def _pass_diffs(x: NDArray[np.float32], mode: str, d_len: np.float32) -> NDArray[np.float32]:
    """d for frames 1.. of x [t, nb, D] against their predecessors in x."""
    if mode == "bf16":
        x = round_bf16(x)
        diff = np.abs(round_bf16(x[1:] - x[:-1]))
    else:
        diff = np.abs(x[1:] - x[:-1])
    total = diff.sum(axis=2, dtype=np.float64).astype(np.float32)  # exact sum, one rounding
    mean = total / d_len  # fp32 division
    if mode == "bf16":
        mean = round_bf16(round_bf16(round_bf16(mean) * np.float32(255.0)) / np.float32(255.0))
    return mean.astype(np.float32)


def frame_token_diffs(frames: NDArray[np.floating], mode: str = "bf16") -> NDArray[np.float32]:
    """d[t, b] for t >= 1 as the comparison operand: frames [T, nb, D] -> d [T-1, nb] (float32). Computed a
    few frames at a time (DIFF_PASS_VALUES); every value depends on frames t-1 and t only, so the passes give
    the whole-input arithmetic exactly."""
    if mode not in MODES:
        raise ValueError(f"token reduction mode {mode!r}; expected one of {MODES}")
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"frames must be [T, n_tokens, D]; got shape {x.shape}")
    d_len = np.float32(x.shape[2])
    t_count = x.shape[0]
    out = np.empty((max(t_count - 1, 0), x.shape[1]), dtype=np.float32)
    step = max(1, DIFF_PASS_VALUES // max(x.shape[1] * x.shape[2], 1))
    for a in range(1, t_count, step):
        b = min(a + step, t_count)
        out[a - 1 : b - 1] = _pass_diffs(x[a - 1 : b], mode, d_len)
    return out


def threshold_value(threshold: float, mode: str = "bf16") -> np.float32:
    t = np.float32(threshold)
    return round_bf16(np.array([t]))[0] if mode == "bf16" else t


def keep_mask(
    frames: NDArray[np.floating],
    threshold: float = 0.1,
    min_tokens: int = 1,
    mode: str = "bf16",
) -> NDArray[np.bool_]:
    """keep [T, nb] for one visual input's frames [T, nb, D]."""
    x = np.asarray(frames)
    t_count, nb = x.shape[0], x.shape[1]
    keep = np.ones((t_count, nb), dtype=bool)
    if t_count > 1:
        keep[1:] = frame_token_diffs(x, mode) > threshold_value(threshold, mode)
        k = min(min_tokens, nb)
        short = keep.sum(axis=1) < k
        keep[short, :k] = True
    return keep


def compaction(keep: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Flat indices of kept rows (in token order) and kept counts per frame, from keep [T, nb]."""
    flat = keep.reshape(-1)
    return np.flatnonzero(flat).astype(np.int64), keep.sum(axis=1).astype(np.int64)


def kept_rows(features: Any, keep: NDArray[np.bool_] | None) -> Any:
    """The rows of the merged tokens that reduction keeps, in token order (frame-major): features
    [T, nb, H] (numpy or torch) and keep [T, nb] -> [n_kept, H]; keep None = every row."""
    flat = features.reshape(-1, features.shape[-1])  # [T, nb, H] -> [T * nb, H]
    return flat if keep is None else flat[np.asarray(keep, dtype=bool).reshape(-1)]


def kept_positions(ids: NDArray[np.integer], image_id: int, keep: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Which prompt positions stay after reduction: every text id, and the image id of each kept merged token
    (the image ids in order <-> the merged tokens of all inputs in order). ids [L], keep any shape -> [L]."""
    flat_ids = np.asarray(ids).reshape(-1)
    is_image = flat_ids == image_id
    flat_keep = np.asarray(keep, dtype=bool).reshape(-1)
    if int(is_image.sum()) != flat_keep.size:
        raise ValueError(f"{int(is_image.sum())} image ids ({image_id}) but {flat_keep.size} merged tokens")
    stay = np.ones(flat_ids.shape, dtype=bool)
    stay[is_image] = flat_keep
    return stay
