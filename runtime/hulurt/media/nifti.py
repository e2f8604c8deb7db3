"""NIfTI volumes (nibabel), with upstream's two slice-selection profiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError
from hulurt.media.common import CorruptInputError, Media, _check_file, _lazy, _logs_warnings
from hulurt.media.window import Window, resolve_window
from hulurt.preprocess import check_frame_size

NIFTI_PROFILES = ("hf", "original")
NIFTI_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
ORIGINAL_NIFTI_SLICES = 180  # mm_utils.load_images default in the original repository



def _slice_indices(n: int, num_slices: int | None, profile: str) -> NDArray[np.int64]:
    if profile == "hf":
        if num_slices is not None and num_slices < n:
            return np.linspace(0, n - 1, num_slices).astype(np.int64)
        return np.arange(n, dtype=np.int64)
    k = ORIGINAL_NIFTI_SLICES if num_slices is None else num_slices
    return np.linspace(0, n - 1, k).astype(np.int64)  # duplicates slices when k > n, as upstream does


def _minmax_slice(s: NDArray[np.float64], profile: str) -> NDArray[np.uint8]:
    """One slice min-max to 0..255 with upstream's (s - min) / (max - min) * 255, truncating cast.

    HF profile: a constant slice becomes zeros. Original profile: a constant slice is cast unnormalised
    (upstream's bug); we make that cast deterministic as trunc-to-int then modulo 256 (the wrap-around C
    casts give on x86 for values within int range).
    """
    lo, hi = float(s.min()), float(s.max())
    if hi > lo:
        return ((s - lo) / (hi - lo) * 255.0).astype(np.uint8)
    if profile == "hf":
        return np.zeros(s.shape, dtype=np.uint8)
    return (np.trunc(s).astype(np.int64) & 0xFF).astype(np.uint8)


@_logs_warnings
def load_nifti(
    path: str | os.PathLike[str],
    profile: str = "hf",
    axis: int | str = 2,
    num_slices: int | None = None,
    window: Window | tuple[float, float] | None = None,
    preset: str | None = None,
) -> Media:
    """A NIfTI volume -> Media of modal "3d", reproducing upstream's two readers (ARCHITECTURE.md 3.6).

    Voxels come from nibabel's float64 get_fdata() (scl_slope/inter applied) in stored order, never
    reoriented. `axis` 0/1/2 or sagittal/coronal/axial. "hf": all slices unless `num_slices` is smaller,
    constant slices -> 0, numpy input (no PIL quirk). "original": `num_slices` default 180 chosen by
    linspace even above the slice count, constant slices wrap, PIL size quirk on.
    Window (explicit or CT preset) clips before the per-slice min-max, as upstream's window_center/width do.
    """
    p = Path(path)
    _check_file(p)
    if profile not in NIFTI_PROFILES:
        raise UnsupportedInputError(p, f"NIfTI profile {profile!r}; expected one of {NIFTI_PROFILES}")
    if isinstance(axis, str):
        if axis.lower() not in NIFTI_AXES:
            raise UnsupportedInputError(
                p, f"NIfTI axis {axis!r}; expected 0, 1, 2 or one of {sorted(NIFTI_AXES)}"
            )
        axis = NIFTI_AXES[axis.lower()]
    if axis not in (0, 1, 2):
        raise UnsupportedInputError(p, f"NIfTI axis {axis!r}; expected 0, 1 or 2")
    if num_slices is not None and num_slices < 1:
        raise UnsupportedInputError(p, f"num_slices={num_slices}; expected a positive number")
    win = resolve_window(window, preset, p)
    nib = _lazy("nibabel", "volume", p)
    try:
        img = nib.load(str(p))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise UnsupportedInputError(
                p,
                f"NIfTI image has shape {tuple(img.shape)}; expected a 3-D volume (X, Y, Z)"
                + (" -- extract one volume of the 4-D series first" if len(shape) == 4 else ""),
            )
        vol = np.asarray(img.get_fdata(dtype=np.float64)).reshape(shape)
    except UnsupportedInputError:
        raise
    except Exception as e:  # nibabel surfaces truncation as EOFError, zlib.error, OSError, ValueError...
        raise CorruptInputError(p, f"cannot read NIfTI volume ({type(e).__name__}: {e})") from e
    bad = int(np.size(vol) - np.count_nonzero(np.isfinite(vol)))
    if bad:
        raise CorruptInputError(p, f"volume has {bad} NaN or infinite voxels; expected finite intensities")
    idx = _slice_indices(shape[axis], num_slices, profile)
    rows, cols = (s for a, s in enumerate(shape) if a != axis)  # the kept axes stay in stored order
    check_frame_size(rows, cols, p)
    u8 = np.empty((idx.size, rows, cols), dtype=np.uint8)
    done: dict[int, int] = {}
    for t, k in enumerate(idx.tolist()):  # slice by slice: peak memory stays at the float64 volume
        if k in done:  # duplicated slice (original profile): copy instead of recomputing
            u8[t] = u8[done[k]]
            continue
        s = np.take(vol, k, axis=axis)  # (rows, cols)
        if win is not None:
            lo = win.center - win.width / 2.0
            s = np.clip(s, lo, lo + win.width)
        u8[t] = _minmax_slice(s, profile)
        done[k] = t
    info = {"profile": profile, "axis": axis, "slices": idx.tolist(), "shape": shape}
    return Media(np.ascontiguousarray(u8[..., None]), "3d", str(p), None, profile == "original", info)
