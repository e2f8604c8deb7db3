"""Pixels -> model input: merge-size selection, the request-wide resize rule, Pillow bicubic, 0.5/0.5
normalisation and merge-grouped patchify (docs/model.md §3.1-3.5). numpy core; Pillow imported lazily.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError

log = logging.getLogger(__name__)

PATCH_SIZE = 14
PATCH_DIM = 3 * PATCH_SIZE * PATCH_SIZE  # 588
MIN_TOKENS = 16
MAX_TOKENS = 16384
IMAGE_MERGE_SIZE = 1
VIDEO_MERGE_SIZE = 2
MIN_SIDE_PX = 14  # a side shorter than one patch carries no image content worth upscaling
MAX_ASPECT = 200.0  # same guard as transformers' smart_resize; beyond it one side rounds to zero patches
VISUAL_MODALS = ("image", "video", "3d")


def _norm_lut() -> NDArray[np.float32]:
    """u8 -> normalised float32, with upstream's exact arithmetic (docs/model.md §3.1).

    transformers' BaseImageProcessor (called by image_processing_hulumed.py) rescales in float64 and casts to
    float32, then normalises (x - 0.5) / 0.5 in float32. A 256-entry table reproduces that bit for bit.
    """
    u8 = np.arange(256, dtype=np.float64)
    rescaled = (u8 * (1.0 / 255.0)).astype(np.float32)
    half = np.float32(0.5)
    return ((rescaled - half) / half).astype(np.float32)


NORM_LUT: NDArray[np.float32] = _norm_lut()


@dataclass(frozen=True)
class VisualPatches:
    """One visual input as the vision piece takes it (hulurt.contract: one visual input per vision call)."""

    patches: NDArray[np.float32]  # [T, n_groups, m*m, 588]
    grid_thw: tuple[int, int, int]  # (T, gh, gw) in 14-px patches
    merge_size: int

    @property
    def flat(self) -> NDArray[np.float32]:
        """[T*gh*gw, 588] in upstream's pixel_values row order (a view)."""
        return self.patches.reshape(-1, PATCH_DIM)

    @property
    def tokens_per_frame(self) -> int:
        _, gh, gw = self.grid_thw
        return (gh // self.merge_size) * (gw // self.merge_size)


def select_merge_sizes(modals: Sequence[str], policy: str = "hf") -> list[int]:
    """merge size per visual input (docs/model.md §3.2).

    "hf": the HF processor's conversation path -- if any input is video/3-D, every input (images too) uses
    m=2, else m=1. "original": one m for the request, 2 if any input is video/3-D (the caller-side rule of
    the original notebooks, which process one modality per request).
    """
    for modal in modals:
        if modal not in VISUAL_MODALS:
            raise ValueError(f"modal {modal!r}; expected one of {VISUAL_MODALS}")
    if policy not in ("hf", "original"):
        raise ValueError(f"merge policy {policy!r}; expected 'hf' or 'original'")
    m = VIDEO_MERGE_SIZE if any(x in ("video", "3d") for x in modals) else IMAGE_MERGE_SIZE
    return [m] * len(modals)


def target_size(
    height: int,
    width: int,
    factor: int,
    total_frames: int = 1,
    min_tokens: int = MIN_TOKENS,
    max_tokens: int = MAX_TOKENS,
) -> tuple[int, int]:
    """(h, w) for one input under the request-wide budget (docs/model.md §3.3, "simple batched resize").

    Ported in our own words from ZJUI-AI4H/Hulu-Med image_processing_hulumed.py: Python round (half to even),
    then a floor rescale when over budget, then a ceil rescale when under the minimum (both checks run).
    """
    if height < 1 or width < 1 or factor < 1 or total_frames < 1:
        raise ValueError(f"target_size({height}, {width}, factor={factor}, total_frames={total_frames})")
    min_px = min_tokens * factor * factor
    budget = (max_tokens * factor * factor) // total_frames
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > budget:
        beta = math.sqrt(height * width / budget)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    if h * w < min_px:
        beta = math.sqrt(min_px / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def plan_sizes(
    first_frame_hw: Sequence[tuple[int, int]],
    frame_counts: Sequence[int],
    merge_sizes: Sequence[int],
    pil_size_swap: Sequence[bool] | None = None,
    min_tokens: int = MIN_TOKENS,
    max_tokens: int = MAX_TOKENS,
) -> list[tuple[int, int]]:
    """Resize targets for every visual input of one request (N = all frames of all inputs).

    pil_size_swap[i] reproduces upstream reading a PIL image's (width, height) as (height, width)
    (docs/model.md §3.4): the rule then sees (W, H) and the frame is resized to that transposed target.
    """
    n = len(first_frame_hw)
    if not (len(frame_counts) == len(merge_sizes) == n):
        raise ValueError("plan_sizes: first_frame_hw, frame_counts and merge_sizes differ in length")
    if len(set(merge_sizes)) > 1:
        raise ValueError(
            f"merge sizes {list(merge_sizes)} differ within one request; upstream's mixed-m rule "
            "(batched_resize) is not implemented -- use one merge size per request"
        )
    swaps = list(pil_size_swap) if pil_size_swap is not None else [False] * n
    total = int(sum(frame_counts))
    out = []
    for (hh, ww), m, swap in zip(first_frame_hw, merge_sizes, swaps):
        if swap:
            hh, ww = ww, hh
        out.append(target_size(hh, ww, PATCH_SIZE * m, total, min_tokens, max_tokens))
    return out


def check_frame_size(height: int, width: int, source: object) -> None:
    """Reject frames no resize can make meaningful (UnsupportedInputError naming the source)."""
    if min(height, width) < MIN_SIDE_PX:
        raise UnsupportedInputError(
            source,
            f"image is {height}x{width} pixels (HxW); need at least {MIN_SIDE_PX} pixels per side "
            f"(one {PATCH_SIZE}x{PATCH_SIZE} patch)",
        )
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise UnsupportedInputError(
            source,
            f"image is {height}x{width} pixels (HxW); aspect ratio above {MAX_ASPECT:g} is not supported",
        )


def _pool_size(n_frames: int) -> int:
    return max(1, min(n_frames, os.cpu_count() or 1))


def _resize_channels(src: NDArray[np.uint8], size_hw: tuple[int, int], out: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Pillow BICUBIC resize of one frame (H, W, C) uint8 into out (h, w, C), one 8-bit channel at a time.

    Pillow resamples every 8-bit channel with the same fixed-point kernel, so channel by channel ("L" images)
    equals resizing the "RGB" image (a test pins this) -- and it skips Pillow's RGB -> RGBX packing, which
    holds the GIL: measured here, 60 frames 360x640 -> 336x616 on 2 threads take 0.23 s per channel vs 0.43 s
    as RGB, so the thread pool really scales.
    """
    from PIL import Image

    h, w = size_hw
    for ch in range(src.shape[2]):
        img = Image.fromarray(np.ascontiguousarray(src[:, :, ch]))  # (H, W) uint8 -> "L"
        out[:, :, ch] = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC))  # PIL sizes are (w, h)
    return out


def resize_frames(
    frames: NDArray[np.uint8], size_hw: tuple[int, int], threads: int | None = None
) -> NDArray[np.uint8]:
    """Pillow BICUBIC resize of every frame: [T, H, W, C] uint8 (C = 1 or 3) -> [T, h, w, C] uint8.

    Gray frames stay one channel: Pillow resamples each 8-bit channel with the same fixed-point kernel, so
    resizing "L" then replicating equals resizing the replicated "RGB" (a test pins this). Pillow releases
    the GIL while resampling, so frames are resized on a small thread pool.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] not in (1, 3):
        raise ValueError(f"frames must be uint8 [T, H, W, 1|3]; got {frames.dtype} {frames.shape}")
    t, hh, ww, c = frames.shape
    h, w = size_hw
    if (hh, ww) == (h, w):
        return frames
    out = np.empty((t, h, w, c), dtype=np.uint8)

    def one(i: int) -> None:
        _resize_channels(frames[i], (h, w), out[i])

    n = threads if threads is not None else _pool_size(t)
    if n <= 1 or t < 2:
        for i in range(t):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=n) as ex:
            list(ex.map(one, range(t)))
    return out


def patchify(frames: NDArray[np.uint8], merge_size: int) -> NDArray[np.float32]:
    """Resized uint8 frames [T, h, w, C] -> normalised, merge-grouped patches [T, n_groups, m*m, 588].

    Order (docs/model.md §3.5, image_processing_hulumed.py `_preprocess`): groups of m x m patches in raster
    order of the merged grid; inside a group (mi, mj) row-major; each 588-vector is (c, py, px). A gray frame
    (C = 1) is replicated to the three channels, as Pillow's L -> RGB conversion does.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] not in (1, 3):
        raise ValueError(f"frames must be uint8 [T, h, w, 1|3]; got {frames.dtype} {frames.shape}")
    m, p = merge_size, PATCH_SIZE
    t, h, w, c = frames.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch*merge = {p * m}")
    bh, bw = h // (p * m), w // (p * m)
    # (T, h, w, C) -> (T, bh, m, p, bw, m, p, C) = (t, bi, mi, py, bj, mj, px, c)
    x = frames.reshape(t, bh, m, p, bw, m, p, c)
    # -> (t, bi, bj, mi, mj, c, py, px): one uint8 copy, then a table lookup into float32
    g = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 5, 7, 3, 6))
    normed = NORM_LUT[g]  # (t, bi, bj, mi, mj, C, py, px) float32
    if c == 3:
        out = normed
    else:
        out = np.empty((t, bh, bw, m, m, 3, p, p), dtype=np.float32)
        out[...] = normed  # broadcast the single channel to c = 0, 1, 2
    # (t, bh, bw, m, m, 3, p, p) -> (T, n_groups, m*m, 588)
    return out.reshape(t, bh * bw, m * m, 3 * p * p)


def preprocess_frames(
    frames: NDArray[np.uint8], size_hw: tuple[int, int], merge_size: int, threads: int | None = None
) -> VisualPatches:
    """Resize + normalise + patchify one visual input's frames [T, H, W, C] uint8 to the planned (h, w).

    Same result as patchify(resize_frames(...)), fused per frame: each worker resizes one frame and writes its
    patches straight into the output, so the frame stays in cache and both steps run on the thread pool.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] not in (1, 3):
        raise ValueError(f"frames must be uint8 [T, H, W, 1|3]; got {frames.dtype} {frames.shape}")
    t, hh, ww, c = frames.shape
    h, w = size_hw
    m, p = merge_size, PATCH_SIZE
    if h % (p * m) or w % (p * m):
        raise ValueError(f"target size {h}x{w} is not a multiple of patch*merge = {p * m}")
    bh, bw = h // (p * m), w // (p * m)
    out = np.empty((t, bh, bw, m, m, 3, p, p), dtype=np.float32)

    def one(i: int) -> None:
        src = frames[i]
        if (hh, ww) != (h, w):
            src = _resize_channels(src, (h, w), np.empty((h, w, c), dtype=np.uint8))
        # (h, w, C) -> (bh, m, p, bw, m, p, C) -> (bi, bj, mi, mj, C, py, px)
        g = np.ascontiguousarray(src.reshape(bh, m, p, bw, m, p, c).transpose(0, 3, 1, 4, 6, 2, 5))
        if c == 3:
            np.take(NORM_LUT, g, out=out[i], mode="clip")
        else:
            out[i] = np.take(NORM_LUT, g, mode="clip")  # broadcast the gray channel to c = 0, 1, 2

    n = threads if threads is not None else _pool_size(t)
    if n <= 1 or t < 2:
        for i in range(t):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=n) as ex:
            list(ex.map(one, range(t)))
    # (t, bh, bw, m, m, 3, p, p) -> (T, n_groups, m*m, 588)
    patches = out.reshape(t, bh * bw, m * m, PATCH_DIM)
    return VisualPatches(patches, (t, h // PATCH_SIZE, w // PATCH_SIZE), merge_size)


def unpatchify(
    patches: NDArray[np.float32], grid_thw: tuple[int, int, int], merge_size: int
) -> NDArray[np.float32]:
    """Inverse of patchify (for tests and debugging): [T, n_groups, m*m, 588] -> [T, 3, h, w] float32."""
    t, gh, gw = grid_thw
    m, p = merge_size, PATCH_SIZE
    # (T, n_groups, m*m, 588) -> (t, bi, bj, mi, mj, c, py, px)
    x = patches.reshape(t, gh // m, gw // m, m, m, 3, p, p)
    # -> (t, c, bi, mi, py, bj, mj, px) -> (T, 3, h, w)
    return np.ascontiguousarray(x.transpose(0, 5, 1, 3, 6, 2, 4, 7)).reshape(t, 3, gh * p, gw * p)
