"""NIfTI volumes (nibabel), with upstream's two slice-selection profiles.

Linear in the volume's size (docs/inputs.md): the header is checked against ReadLimits before any voxel is
read, only the kept slices are read through nibabel's array proxy (one forward pass through a .nii.gz), and
each slice is scaled to uint8 on its own; no whole-volume float64 copy is ever made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError
from hulurt.media.common import (
    CorruptInputError,
    Media,
    ReadLimits,
    _check_file,
    _lazy,
    _logs_warnings,
    check_num_slices,
    log,
    pick_slices,
)
from hulurt.media.window import WindowSpec, resolve_window
from hulurt.preprocess import check_frame_size

NIFTI_PROFILES = ("hf", "original")
NIFTI_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
ORIGINAL_NIFTI_SLICES = 180  # mm_utils.load_images default in the original repository
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand more: a .nii.gz declaring more voxels than that is cut short
SLAB_BYTES = 64 << 20  # sagittal/coronal slices are gathered from axial slabs of at most this size


def _slice_indices(
    n: int, num_slices: int | None, profile: str, max_frames: int | None, source: object
) -> tuple[NDArray[np.int64], str | None]:
    """Slices to keep and an optional note. "hf": all unless num_slices is smaller (pick_slices, which also
    samples down to max_frames with a note). "original": num_slices (default 180) by linspace, duplicating
    slices when above n as upstream does; the default drops to max_frames with a note."""
    if profile == "hf":
        return pick_slices(n, num_slices, max_frames, source)
    if num_slices is not None:
        check_num_slices(num_slices, max_frames, source)
        return np.linspace(0, n - 1, num_slices).astype(np.int64), None
    k, note = ORIGINAL_NIFTI_SLICES, None
    if max_frames is not None and k > max_frames:
        note = (
            f"{source}: the original profile's {k} slices reduced to {max_frames} by linspace(0, {n - 1}, "
            f"{max_frames}) to fit the bundle's frame limit (choose with num_slices / --slices)"
        )
        k = max_frames
    return np.linspace(0, n - 1, k).astype(np.int64), note  # duplicates slices when k > n, as upstream does


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


def _minmax_small_int(s: NDArray[Any], profile: str) -> NDArray[np.uint8]:
    """_minmax_slice of an 8- or 16-bit integer slice (unscaled voxels, no window: most CT and MR files),
    through a table: every value between the slice's min and max goes through the same float64 formula once,
    then each voxel looks its value up. Equal to _minmax_slice(s.astype(float64)) voxel for voxel (integers
    are exact in float64, so min, max and every formula input are the same)."""
    lo, hi = int(s.min()), int(s.max())
    if hi == lo:
        return _minmax_slice(s.astype(np.float64), profile)
    lut = _minmax_slice(np.arange(lo, hi + 1, dtype=np.float64), profile)  # min lo, max hi: the same scale
    return lut[(s.astype(np.int32) - lo)]


def _check_size(p: Path, img: Any, shape: tuple[int, ...], axis: int, lim: ReadLimits) -> None:
    """Before any voxel is read: the declared size against the limits and against the file's own size."""
    rows, cols = (s for a, s in enumerate(shape) if a != axis)
    lim.check(p, shape[axis], rows, cols, what="declares")
    itemsize = int(np.dtype(img.get_data_dtype()).itemsize)
    need = int(np.prod(shape)) * itemsize
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    size = p.stat().st_size
    if p.name.lower().endswith(".gz"):
        if need > (size + 1) * MAX_DEFLATE_RATIO:
            raise CorruptInputError(
                p,
                f"header declares {'x'.join(map(str, shape))} voxels ({need:,} bytes) but the file is {size:,} "
                f"bytes compressed, more than deflate can hold ({MAX_DEFLATE_RATIO}:1); it is cut short",
            )
    elif size < offset + need:
        raise CorruptInputError(
            p,
            f"header declares {'x'.join(map(str, shape))} voxels ({need:,} bytes from offset {offset}) but the "
            f"file is {size:,} bytes; it is cut short",
        )


def _igzip() -> Any:
    """python-isal's igzip module (ISA-L's inflate, about 3x zlib's on a 512x512x300 int16 .nii.gz,
    benchmarks/results/media_read_quiet.md), or None when the package is not installed."""
    try:
        from isal import igzip  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return igzip


def _open_voxels(p: Path, img: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The voxel proxy to read slices through, and the file to close after. A .nii.gz is inflated by ISA-L
    where python-isal is installed: a nibabel ArrayProxy over an igzip stream, with the image's own shape,
    dtype, offset and scaling, so the values are the ones nibabel's reader gives. Else nibabel's proxy
    (zlib)."""
    igzip = _igzip()
    if igzip is None or not p.name.lower().endswith(".gz"):
        proxy = img.dataobj if len(shape) == len(img.shape) else img.slicer[..., 0].dataobj
        return proxy, None
    from nibabel.arrayproxy import ArrayProxy

    src = img.dataobj
    f = igzip.open(str(p), "rb")
    spec = (shape, src.dtype, src.offset, src.slope, src.inter)
    return ArrayProxy(f, spec, mmap=False), f


def _read_slices(proxy: Any, shape: tuple[int, ...], axis: int, wanted: list[int], itemsize: int) -> Any:
    """Yield (k, slice as stored/scaled by nibabel) for the sorted unique slice indices `wanted`, in order,
    reading the file forward once. Values equal get_fdata()'s (same scaling) before the float64 cast."""
    if axis == 2:  # a slice is one contiguous block of the Fortran-ordered file
        for k in wanted:
            yield k, np.asarray(proxy[:, :, k])
        return
    per_z = int(shape[0]) * int(shape[1]) * itemsize
    step = max(1, SLAB_BYTES // max(per_z, 1))
    out: dict[int, Any] = {}
    for z0 in range(0, shape[2], step):
        slab = np.asarray(proxy[:, :, z0 : z0 + step])  # (X, Y, dz)
        for k in wanted:
            s = slab[k] if axis == 0 else slab[:, k]  # (Y, dz) or (X, dz)
            if k not in out:
                out[k] = np.empty((s.shape[0], shape[2]), dtype=s.dtype)
            out[k][:, z0 : z0 + slab.shape[2]] = s
    for k in wanted:
        yield k, out.pop(k)


@_logs_warnings
def load_nifti(
    path: str | os.PathLike[str],
    profile: str = "hf",
    axis: int | str = 2,
    num_slices: int | None = None,
    window: WindowSpec = None,
    preset: str | None = None,
    limits: ReadLimits | None = None,
) -> Media:
    """A NIfTI volume -> Media of modal "3d", reproducing upstream's two readers (docs/model.md §3.6).

    Voxel values are nibabel's get_fdata() values (scl_slope/inter applied, float64) in stored order, never
    reoriented, read slice by slice. `axis` 0/1/2 or sagittal/coronal/axial. "hf": all slices unless
    `num_slices` is smaller, constant slices -> 0, numpy input (no PIL quirk). "original": `num_slices`
    default 180 chosen by linspace even above the slice count, constant slices wrap, PIL size quirk on.
    More slices than `limits.max_frames` (the bundle's frame range) are sampled down by the same linspace rule,
    with a note in the log and in info["note"]. Window (explicit, CT preset or "center,width") clips before
    the per-slice min-max, as upstream's window_center/width do.
    """
    p = Path(path)
    _check_file(p)
    lim = limits or ReadLimits()
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
    win = resolve_window(window, preset, p)
    nib = _lazy("nibabel", "volume", p)
    try:
        img = nib.load(str(p), keep_file_open=True)  # header only; voxels stay in the file
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise UnsupportedInputError(
                p,
                f"NIfTI image has shape {tuple(img.shape)}; expected a 3-D volume (X, Y, Z)"
                + (" -- extract one volume of the 4-D series first" if len(shape) == 4 else ""),
            )
        _check_size(p, img, shape, axis, lim)
    except UnsupportedInputError:
        raise
    except Exception as e:  # nibabel surfaces bad headers as many types
        raise CorruptInputError(p, f"cannot read NIfTI volume ({type(e).__name__}: {e})") from e
    idx, note = _slice_indices(shape[axis], num_slices, profile, lim.max_frames, p)
    if note:
        log.info("%s", note)
    rows, cols = (s for a, s in enumerate(shape) if a != axis)  # the kept axes stay in stored order
    check_frame_size(rows, cols, p)
    u8 = np.empty((idx.size, rows, cols), dtype=np.uint8)
    where: dict[int, list[int]] = {}
    for t, k in enumerate(idx.tolist()):
        where.setdefault(k, []).append(t)
    bad = 0
    opened = None
    try:
        proxy, opened = _open_voxels(p, img, shape)  # (X, Y, Z, 1) is read as (X, Y, Z): the same bytes
        itemsize = int(np.dtype(img.get_data_dtype()).itemsize)
        for k, raw in _read_slices(proxy, shape, axis, sorted(where), itemsize):
            ts = where[k]
            if win is None and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2:
                u8[ts[0]] = _minmax_small_int(np.asarray(raw).reshape(rows, cols), profile)
                for t in ts[1:]:
                    u8[t] = u8[ts[0]]
                continue
            s = np.asarray(raw, dtype=np.float64).reshape(rows, cols)
            n_bad = int(s.size - np.count_nonzero(np.isfinite(s)))
            if n_bad:
                bad += n_bad
                continue
            if win is not None:
                lo = win.center - win.width / 2.0
                s = np.clip(s, lo, lo + win.width)
            u8[ts[0]] = _minmax_slice(s, profile)
            for t in ts[1:]:  # duplicated slice (original profile): copy instead of recomputing
                u8[t] = u8[ts[0]]
    except UnsupportedInputError:
        raise
    except Exception as e:  # nibabel surfaces truncation as EOFError, zlib.error, OSError, ValueError...
        raise CorruptInputError(p, f"cannot read NIfTI volume ({type(e).__name__}: {e})") from e
    finally:
        if opened is not None:
            opened.close()
    if bad:
        raise CorruptInputError(p, f"volume has {bad} NaN or infinite voxels; expected finite intensities")
    info: dict[str, Any] = {"profile": profile, "axis": axis, "slices": idx.tolist(), "shape": shape,
                            "source_frames": shape[axis],
                            "window": (win.center, win.width) if win is not None else "minmax per slice"}
    if note:
        info["note"] = note
    return Media(np.ascontiguousarray(u8[..., None]), "3d", str(p), None, profile == "original", info)
