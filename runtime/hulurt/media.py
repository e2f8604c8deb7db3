"""Readers: image files (Pillow), DICOM files/series (pydicom), NIfTI volumes (nibabel), video (decord, PyAV).

Each returns a `Media`: uint8 frames [T, H, W, C] (C = 1 gray or 3 RGB) plus modal, timestamps and the
PIL-size-quirk flag of ARCHITECTURE.md 3.4. Reader libraries are optional extras, imported when used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError
from hulurt.preprocess import check_frame_size

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DICOM_EXTS = (".dcm", ".dicom", ".ima")
NIFTI_EXTS = (".nii", ".nii.gz")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif")

# CT windows in Hounsfield units as (center, width); the usual radiology reading windows.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}
NIFTI_PROFILES = ("hf", "original")
NIFTI_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
ORIGINAL_NIFTI_SLICES = 180  # mm_utils.load_images default in the original repository
MAX_PIXELS_PER_FRAME = 89_478_485  # Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
MAX_FRAMES_HARD = 4096  # far above any budget that still gives >= min_tokens per frame


class MissingExtraError(UnsupportedInputError):
    """The reader library for this kind of file is not installed (name the extra to install)."""


class CorruptInputError(UnsupportedInputError):
    """The file exists but cannot be decoded (truncated, wrong format, no pixel data, NaN voxels...)."""


@dataclass(frozen=True, eq=False)
class Media:
    """Decoded frames of one visual input, before resizing."""

    frames: NDArray[np.uint8]  # [T, H, W, C], C in (1, 3)
    modal: str  # "image" | "video" | "3d"
    source: str
    timestamps: tuple[float, ...] | None = None  # seconds, one per frame (video only)
    pil_size_swap: bool = False  # upstream read this input's size as PIL (width, height) (ARCHITECTURE 3.4)
    info: dict[str, Any] = field(default_factory=dict)  # reader details (fps, spacing, window used, ...)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


@dataclass(frozen=True)
class Window:
    """Intensity window; `center`/`width` in the file's stored units after rescale (HU for CT)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)) or self.width <= 0:
            raise ValueError(
                f"window center={self.center} width={self.width}; need finite values and width > 0"
            )


def _lazy(module: str, extra: str, path: object) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            path,
            f"reading this file needs the '{module}' package: pip install 'huluexport-runtime[{extra}]' ({e})",
        ) from e


@contextlib.contextmanager
def _warnings_to_log(path: object) -> Iterator[None]:
    """Reader libraries warn about recoverable oddities (corrupt EXIF, odd DICOM values); log them instead of
    letting them print, so the CLI's output stays one line per error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                log.info("%s: %s", path, w.message)


def _logs_warnings(reader: Callable[..., Media]) -> Callable[..., Media]:
    """Decorator: run a reader with its library warnings sent to the log (see _warnings_to_log)."""

    @functools.wraps(reader)
    def wrapped(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Media:
        with _warnings_to_log(path):
            return reader(path, *args, **kwargs)

    return wrapped


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UnsupportedInputError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise CorruptInputError(path, "file is empty (0 bytes)")


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def kind_of(path: str | os.PathLike[str]) -> str:
    """'image' | 'dicom' | 'nifti' | 'video' from the name (and the DICM magic for extension-less files)."""
    p = Path(path)
    _check_file(p)
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    if name.endswith(NIFTI_EXTS):
        return "nifti"
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTS:
        return "image"
    if suffix in DICOM_EXTS or _is_dicom_file(p):
        return "dicom"
    if suffix in VIDEO_EXTS:
        return "video"
    raise UnsupportedInputError(
        p,
        f"unsupported file type {suffix or '(no extension)'!r}; expected an image {IMAGE_EXTS}, DICOM "
        f"{DICOM_EXTS} or a DICOM series directory, NIfTI {NIFTI_EXTS} or video {VIDEO_EXTS}",
    )


def load_media(path: str | os.PathLike[str], **options: Any) -> Media:
    """Read any supported file; `options` go to the matching reader (load_image/dicom/nifti/video)."""
    readers = {"image": load_image, "dicom": load_dicom, "nifti": load_nifti, "video": load_video}
    return readers[kind_of(path)](path, **options)  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------------- images


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
    image files (ARCHITECTURE.md 3.4); pass False to resize with the true aspect ratio.
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


# ----------------------------------------------------------------------------------------------- windowing


def apply_window(vol: NDArray[np.floating], window: Window) -> NDArray[np.uint8]:
    """Linear window to 0..255: [c - w/2, c + w/2] -> [0, 255], clipped, truncated to uint8."""
    lo = window.center - window.width / 2.0
    out = (np.clip(vol, lo, lo + window.width) - lo) / window.width * 255.0
    return out.astype(np.uint8)


def minmax_u8(vol: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Min-max over the whole array to 0..255 (truncated); a constant array becomes zeros."""
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        return np.zeros(vol.shape, dtype=np.uint8)
    return ((vol - lo) / (hi - lo) * 255.0).astype(np.uint8)


def resolve_window(
    window: Window | tuple[float, float] | None, preset: str | None, path: object
) -> Window | None:
    if window is not None and preset is not None:
        raise UnsupportedInputError(path, "give either an explicit window or a preset name, not both")
    if preset is not None:
        key = preset.lower()
        if key not in CT_PRESETS:
            raise UnsupportedInputError(
                path, f"unknown window preset {preset!r}; expected one of {sorted(CT_PRESETS)}"
            )
        return Window(*CT_PRESETS[key])
    if window is None or isinstance(window, Window):
        return window
    try:
        return Window(float(window[0]), float(window[1]))
    except (TypeError, ValueError, IndexError) as e:
        raise UnsupportedInputError(
            path, f"window {window!r}: expected (center, width) with width > 0 ({e})"
        ) from e


# --------------------------------------------------------------------------------------------------- DICOM


def _first(v: Any) -> float:
    """A DICOM DS/IS value or multi-value -> its first float."""
    try:
        return float(v[0])
    except TypeError:
        return float(v)


def _dicom_slices(ds: Any, path: object) -> NDArray[Any]:
    """Pixel data as [T, H, W] (gray) or [T, H, W, 3] (color), with the modality LUT applied to gray."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise CorruptInputError(path, "DICOM file has no pixel data (e.g. a structured report or DICOMDIR)")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for missing handlers / bad lengths
        raise CorruptInputError(path, f"cannot decode DICOM pixel data: {e}") from e
    spp = int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)  # RGB at the palette's bit depth
            if arr.dtype == np.uint16:
                arr = (arr // 257).astype(np.uint8)  # 16-bit palette entries -> 8-bit
        except Exception as e:
            raise CorruptInputError(path, f"cannot apply the DICOM palette color table: {e}") from e
        spp = 3
    if spp == 3:
        arr = arr if frames > 1 else arr[None]
        if arr.dtype != np.uint8:
            arr = minmax_u8(arr.astype(np.float64))
        return arr
    arr = arr if frames > 1 else arr[None]
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_rescale

        return np.asarray(apply_rescale(arr, ds), dtype=np.float64)
    slope, intercept = _rescale_of(ds)
    return arr.astype(np.float64) * slope + intercept


def _rescale_of(ds: Any) -> tuple[float, float]:
    """RescaleSlope/Intercept from the top level, or (enhanced multi-frame) the shared functional groups."""
    src = ds
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        try:
            src = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        except (AttributeError, IndexError):
            src = ds
    slope = float(getattr(src, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(src, "RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _slice_position(ds: Any) -> float | None:
    """Position along the slice normal (mm), from ImageOrientationPatient x ImagePositionPatient."""
    try:
        o = [float(x) for x in ds.ImageOrientationPatient]
        pos = np.array([float(x) for x in ds.ImagePositionPatient])
    except (AttributeError, TypeError, ValueError):
        return None
    if len(o) != 6 or pos.shape != (3,):
        return None
    normal = np.cross(np.array(o[:3]), np.array(o[3:]))
    return float(normal @ pos)


def _read_series(directory: Path) -> tuple[list[Any], list[Path]]:
    pydicom = _lazy("pydicom", "volume", directory)
    files = sorted(f for f in directory.iterdir() if f.is_file() and not f.name.startswith("."))
    datasets, paths = [], []
    for f in files:
        if f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:  # InvalidDicomError and friends: skip non-DICOM files in the folder
            log.info("skipping %s in DICOM series %s: %s", f.name, directory, e)
            continue
        datasets.append(ds)
        paths.append(f)
    if not datasets:
        raise CorruptInputError(directory, "directory holds no readable DICOM files")
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise UnsupportedInputError(
            directory,
            f"directory holds {len(uids)} DICOM series ({sorted(uids)}); point to one series folder",
        )
    return datasets, paths


def _sort_series(datasets: list[Any], paths: list[Path]) -> tuple[list[Any], list[Path], str]:
    positions = [_slice_position(ds) for ds in datasets]
    if all(p is not None for p in positions) and len(set(positions)) == len(positions):
        order = sorted(range(len(datasets)), key=lambda i: positions[i])  # type: ignore[arg-type,return-value]
        how = "ImagePositionPatient"
    else:
        numbers = [getattr(ds, "InstanceNumber", None) for ds in datasets]
        if all(n is not None for n in numbers):
            order = sorted(range(len(datasets)), key=lambda i: (int(numbers[i]), paths[i].name))
            how = "InstanceNumber"
        else:
            order = list(range(len(datasets)))
            how = "file name"
    return [datasets[i] for i in order], [paths[i] for i in order], how


@_logs_warnings
def load_dicom(
    path: str | os.PathLike[str],
    window: Window | tuple[float, float] | None = None,
    preset: str | None = None,
    use_file_window: bool = True,
    max_slices: int | None = None,
) -> Media:
    """A DICOM file (single or multi-frame) or a series directory -> Media ("image" if 1 frame, else "3d").

    Gray pixels get RescaleSlope/Intercept, then the window: explicit (center, width) > named CT preset >
    the file's own WindowCenter/WindowWidth (first value) > min-max over the whole volume. MONOCHROME1 is
    inverted after windowing so that bright always means dense. A series is sorted along the slice normal
    (ImagePositionPatient . (row x col direction)), falling back to InstanceNumber. `max_slices` keeps
    linspace-chosen slices (as the NIfTI readers do).
    """
    p = Path(path)
    _check_file(p)
    pydicom = _lazy("pydicom", "volume", p)
    win = resolve_window(window, preset, p)
    if p.is_dir():
        datasets, paths = _read_series(p)
        datasets, paths, how = _sort_series(datasets, paths)
        shapes = {}
        for ds, f in zip(datasets, paths):
            shapes.setdefault((int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))), f.name)
        if len(shapes) > 1:
            raise UnsupportedInputError(
                p,
                f"series mixes slice sizes {sorted(shapes)} (e.g. {sorted(shapes.values())}); expected one size",
            )
        parts = [_dicom_slices(ds, f) for ds, f in zip(datasets, paths)]
        kinds = {("color" if a.ndim == 4 else "gray"): f.name for a, f in zip(parts, paths)}
        if len(kinds) > 1:
            raise UnsupportedInputError(
                p,
                f"series mixes gray and color images (e.g. {kinds['gray']}, {kinds['color']}); expected one kind",
            )
        vol = np.concatenate(parts, axis=0)
        ref = datasets[0]
        info: dict[str, Any] = {"sorted_by": how, "files": len(paths)}
    else:
        try:
            ref = pydicom.dcmread(p, force=True)
        except Exception as e:
            raise CorruptInputError(p, f"not a readable DICOM file: {e}") from e
        vol = _dicom_slices(ref, p)
        info = {"sorted_by": "frame order"}
    if max_slices is not None and max_slices < vol.shape[0]:
        keep = np.linspace(0, vol.shape[0] - 1, max_slices).astype(int)
        vol = vol[keep]
    photometric = str(getattr(ref, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if vol.ndim == 4:  # color: already uint8 RGB
        frames = np.ascontiguousarray(vol)
        info["window"] = None
    else:
        if not np.isfinite(vol).all():
            raise CorruptInputError(p, "DICOM pixel data contains NaN or infinite values")
        if win is not None and preset is not None and str(getattr(ref, "Modality", "CT")).upper() != "CT":
            log.warning(
                "%s: CT window preset %r applied to modality %s", p, preset, getattr(ref, "Modality", "?")
            )
        if win is None and use_file_window and "WindowCenter" in ref and "WindowWidth" in ref:
            try:
                win = Window(_first(ref.WindowCenter), _first(ref.WindowWidth))
            except ValueError as e:
                log.warning("%s: ignoring the file's window (%s)", p, e)
        u8 = apply_window(vol, win) if win is not None else minmax_u8(vol)
        if photometric == "MONOCHROME1":
            u8 = 255 - u8
        frames = u8[..., None]
        info["window"] = (win.center, win.width) if win is not None else "minmax"
    info["photometric"] = photometric
    check_frame_size(frames.shape[1], frames.shape[2], p)
    modal = "image" if frames.shape[0] == 1 else "3d"
    return Media(np.ascontiguousarray(frames), modal, str(p), None, False, info)


# --------------------------------------------------------------------------------------------------- NIfTI


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


# --------------------------------------------------------------------------------------------------- video


def sample_frames(
    n_frames: int,
    video_fps: float,
    fps: float | None = 1.0,
    max_frames: int = 128,
    start_time: float | None = None,
    end_time: float | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Frame indices and their timestamps: every max(1, int(video_fps / fps))-th frame of [start, end), then, if
    more than `max_frames` remain, `max_frames` frames spread by linspace over that range; timestamp = index /
    fps of the file. This is the original repository's decord rule (mm_utils.load_video), in our own words; the
    HF processor's ffmpeg `fps` filter picks frames at k / fps, which agrees to within one source frame.
    """
    rate = video_fps if video_fps > 0 else 1.0
    first = 0 if start_time is None else max(0, int(start_time * rate))
    stop = n_frames if end_time is None else min(n_frames, int(math.ceil(end_time * rate)))
    if stop <= first:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    step = 1 if not fps or video_fps <= 0 else max(1, int(video_fps / fps))
    idx = np.arange(first, stop, step, dtype=np.int64)
    if max_frames and idx.size > max_frames:
        idx = np.linspace(first, stop - 1, max_frames).astype(np.int64)
    return idx, idx / rate


def sample_frames_hf(
    n_frames: int,
    video_fps: float,
    fps: float | None = 1.0,
    max_frames: int = 128,
    start_time: float | None = None,
    end_time: float | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The HF processor's rule (processing_hulumed.py load_video, ARCHITECTURE.md 3.7), in our own words:
    output times t_k = start + k / fps over the clip (ffmpeg's fps filter, round=down picks the frame shown at
    t_k), timestamps t_k; if more than `max_frames`, keep linspace(0, K-1, max_frames) of those samples.
    Frame choice can differ from ffmpeg's by one source frame at exact ties; timestamps agree.
    """
    rate = video_fps if video_fps > 0 else 1.0
    t0 = 0.0 if start_time is None else max(0.0, float(start_time))
    t1 = n_frames / rate if end_time is None else min(n_frames / rate, float(end_time))
    if t1 <= t0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if fps:
        ts = t0 + np.arange(int(math.ceil((t1 - t0) * fps - 1e-9)), dtype=np.float64) / fps
        idx = np.minimum(np.floor(ts * rate + 1e-6).astype(np.int64), n_frames - 1)
    else:
        idx = np.arange(int(t0 * rate), int(math.ceil(t1 * rate - 1e-9)), dtype=np.int64)
        ts = idx / rate
    if max_frames and idx.size > max_frames:
        sel = np.linspace(0, idx.size - 1, max_frames).astype(np.int64)
        idx, ts = idx[sel], ts[sel]
    return idx, ts


VIDEO_PROFILES = {"hf": sample_frames_hf, "original": sample_frames}
Sampler = Callable[[int, float], tuple[NDArray[np.int64], NDArray[np.float64]]]


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence C-level writes to fd 2 (decord and its ffmpeg log failures there themselves), so a bad file
    gives our one-line error only."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_decord(p: Path, pick: Sampler) -> tuple[NDArray[np.uint8], NDArray[np.float64], float]:
    import decord  # optional; PyAV is the fallback

    with _quiet_native_stderr():
        vr = decord.VideoReader(str(p), num_threads=1)
        n = len(vr)
        vfps = float(vr.get_avg_fps())
        idx, ts = pick(n, vfps)
        frames = vr.get_batch(idx.tolist()).asnumpy()
    return frames, ts, vfps


def _decode_av(p: Path, pick: Sampler) -> tuple[NDArray[np.uint8], NDArray[np.float64], float]:
    av = _lazy("av", "video", p)
    with av.open(str(p)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        vfps = float(rate) if rate else 0.0
        n = int(stream.frames or 0)
        if n <= 0:  # unknown frame count: decode once to count
            n = sum(1 for _ in container.decode(stream))
            container.seek(0)
        idx, ts = pick(n, vfps)
        wanted: dict[int, int] = {}
        for j, i in enumerate(idx.tolist()):
            wanted.setdefault(i, j)
        out: list[NDArray[np.uint8] | None] = [None] * idx.size
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                for j in np.flatnonzero(idx == i):
                    out[int(j)] = rgb
            if i >= int(idx[-1]):
                break
    got = [f for f in out if f is not None]
    if len(got) != idx.size:
        raise CorruptInputError(
            p, f"video header promises {n} frames but only {len(got)} sampled frames decoded"
        )
    return np.stack(got), ts, vfps


@_logs_warnings
def load_video(
    path: str | os.PathLike[str],
    fps: float | None = 1.0,
    max_frames: int = 128,
    backend: str | None = None,
    start_time: float | None = None,
    end_time: float | None = None,
    profile: str = "hf",
) -> Media:
    """A video file -> Media of modal "video" with timestamps (ARCHITECTURE.md 3.7); decord, else PyAV.

    fps: frames sampled per second (None = every frame); max_frames: cap by uniform subsampling;
    start_time/end_time (seconds) trim the clip first; profile "hf" (timestamps k / fps, the HF processor)
    or "original" (every int(video_fps / fps)-th frame, timestamps index / video_fps, mm_utils.load_video).
    """
    p = Path(path)
    _check_file(p)
    if profile not in VIDEO_PROFILES:
        raise UnsupportedInputError(p, f"video profile {profile!r}; expected one of {sorted(VIDEO_PROFILES)}")
    sampler = VIDEO_PROFILES[profile]

    def pick(n: int, vfps: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        idx, ts = sampler(n, vfps, fps, max_frames, start_time, end_time)
        if idx.size == 0:
            raise UnsupportedInputError(
                p, f"no frames to sample: {n} frames at {vfps:g} fps, time range [{start_time}, {end_time}) s"
            )
        return idx, ts

    if max_frames < 1 or max_frames > MAX_FRAMES_HARD:
        raise UnsupportedInputError(p, f"max_frames={max_frames}; expected 1..{MAX_FRAMES_HARD}")
    if fps is not None and not fps > 0:
        raise UnsupportedInputError(
            p, f"fps={fps}; expected a positive sampling rate or None for every frame"
        )
    order = {"decord": [_decode_decord], "av": [_decode_av], None: [_decode_decord, _decode_av]}
    if backend not in order:
        raise UnsupportedInputError(p, f"video backend {backend!r}; expected 'decord', 'av' or None")
    errors = []
    for decode in order[backend]:
        try:
            frames, ts, vfps = decode(p, pick)
            break
        except UnsupportedInputError:
            raise
        except Exception as e:  # decord raises DECORDError, PyAV raises av.error.*; report both
            errors.append(f"{decode.__name__[8:]}: {type(e).__name__}: {e}")
    else:
        raise CorruptInputError(p, "cannot decode video (" + "; ".join(errors) + ")")
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise CorruptInputError(p, "video has no decodable frames")
    check_frame_size(frames.shape[1], frames.shape[2], p)
    info = {"video_fps": vfps, "backend": decode.__name__[8:], "profile": profile}
    return Media(
        np.ascontiguousarray(frames, dtype=np.uint8),
        "video",
        str(p),
        tuple(float(t) for t in ts),
        False,
        info,
    )


def frames_to_media(
    frames: Sequence[NDArray[Any]] | NDArray[Any],
    timestamps: Sequence[float] | None = None,
    modal: str = "video",
    source: str = "<frames>",
) -> Media:
    """Already-decoded frames [T, H, W(, 3)] uint8 -> Media (no PIL quirk)."""
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[3] not in (1, 3) or a.dtype != np.uint8 or a.shape[0] == 0:
        raise UnsupportedInputError(
            source, f"frames of shape {a.shape} dtype {a.dtype}; expected uint8 [T, H, W, 1|3]"
        )
    if timestamps is not None and len(timestamps) != a.shape[0]:
        raise UnsupportedInputError(source, f"{len(timestamps)} timestamps for {a.shape[0]} frames")
    check_frame_size(a.shape[1], a.shape[2], source)
    ts = tuple(float(t) for t in timestamps) if timestamps is not None else None
    return Media(np.ascontiguousarray(a), modal, source, ts)
