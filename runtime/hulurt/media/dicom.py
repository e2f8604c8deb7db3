"""DICOM files (single and multi-frame) and series directories (pydicom)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError
from hulurt.media.common import CorruptInputError, Media, _check_file, _lazy, _logs_warnings, log
from hulurt.media.window import Window, apply_window, minmax_u8, resolve_window
from hulurt.preprocess import check_frame_size



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
