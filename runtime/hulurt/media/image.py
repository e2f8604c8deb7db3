"""2-D image files (Pillow) and in-memory arrays."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError
from hulurt.media.common import (
    MAX_PIXELS_PER_FRAME,
    CorruptInputError,
    Media,
    _check_file,
    _lazy,
    _logs_warnings,
)
from hulurt.preprocess import check_frame_size


def _to_u8_gray(a: NDArray[Any], path: object) -> NDArray[np.uint8]:
    """Any-depth gray array -> uint8 by min-max over the image (16-bit X-rays keep their full range)."""
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise CorruptInputError(path, "image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return ((a - lo) / (hi - lo) * 255.0).astype(np.uint8)


@_logs_warnings
def load_image(
    path: str | os.PathLike[str],
    pil_size_swap: bool = True,
    max_pixels: int = MAX_PIXELS_PER_FRAME,
) -> Media:
    """A 2-D image file -> Media with one frame; gray (8/16-bit) stays 1 channel, others become RGB.

    RGBA/LA/P drop alpha the way upstream's `convert("RGB")` does. 16-bit and 32-bit gray are min-max scaled to
    uint8 (Pillow's own conversion would clip at 255). `pil_size_swap` defaults to upstream's behaviour for
    image files (docs/model.md §3.4); pass False to resize with the true aspect ratio.
    """
    p = Path(path)
    _check_file(p)
    pil = _lazy("PIL.Image", "image", p)
    try:
        with pil.open(p) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise CorruptInputError(p, f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            img.load()
            mode = img.mode
            if mode in ("L", "1"):
                arr = np.asarray(img.convert("L"))[..., None]
            elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                arr = _to_u8_gray(np.asarray(img), p)[..., None]
            else:
                arr = np.asarray(img.convert("RGB"))
    except UnsupportedInputError:
        raise
    except pil.DecompressionBombError as e:
        raise CorruptInputError(p, f"image too large, refused as a possible decompression bomb ({e})") from e
    except (OSError, ValueError, SyntaxError, zlib.error) as e:
        raise CorruptInputError(p, f"cannot decode image: {e}") from e
    check_frame_size(arr.shape[0], arr.shape[1], p)
    return Media(np.ascontiguousarray(arr)[None], "image", str(p), None, pil_size_swap, {"mode": mode})


def image_from_array(array: NDArray[Any], source: str = "<array>") -> Media:
    """An in-memory H x W (gray) or H x W x 3/4 uint8 array -> Media (numpy input: no PIL size quirk)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise UnsupportedInputError(source, f"array of shape {a.shape}; expected HxW, HxWx3 or HxWx4")
    if a.dtype != np.uint8:
        if a.shape[2] != 1:
            raise UnsupportedInputError(source, f"color array of dtype {a.dtype}; expected uint8")
        a = _to_u8_gray(a[..., 0], source)[..., None]
    a = a[..., :3]
    check_frame_size(a.shape[0], a.shape[1], source)
    return Media(np.ascontiguousarray(a)[None], "image", source)
