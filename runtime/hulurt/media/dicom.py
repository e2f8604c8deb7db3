"""DICOM files (single and multi-frame) and series directories (pydicom; the `volume` extra adds the pylibjpeg
codecs for JPEG Lossless, JPEG-LS, JPEG 2000 and 12-bit JPEG).

Order of work, so that a huge or hostile input costs little (docs/inputs.md): headers first without pixel
values (hulurt.media.dicom_header), the declared sizes checked against ReadLimits, the frames to keep chosen
by upstream's linspace rule, and only those decoded, one at a time, each rescaled and windowed straight to
uint8. Memory is the uint8 output plus one frame, except min-max scaling without any window, which keeps the
kept frames in their stored integer type until the volume's range is known.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
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
    log,
    pick_slices,
)
from hulurt.media.dicom_header import Declared, check_declared, declared, pydicom_log_captured, read_header
from hulurt.media.dicom_series import read_series
from hulurt.media.window import CT_PRESETS, Window, WindowSpec, apply_window, resolve_window
from hulurt.preprocess import check_frame_size


def _first(v: Any) -> float:
    """A DICOM DS/IS value or multi-value -> its first float."""
    try:
        return float(v[0])
    except TypeError:
        return float(v)


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


@dataclass
class _Source:
    """One file and the frame indices to decode from it, in output order."""

    path: Path
    header: Any
    deflated: bool
    frames: list[int]


def _decode(src: _Source) -> Iterator[NDArray[Any]]:
    """The wanted frames of one file, decoded one at a time (YBR -> RGB as pydicom does by default)."""
    pydicom = _lazy("pydicom", "volume", src.path)
    from pydicom.pixels import iter_pixels

    try:
        with pydicom_log_captured(src.path):
            ds = pydicom.dcmread(src.path, force=True)
            _guess_transfer_syntax(pydicom, ds)
            yield from iter_pixels(ds, indices=src.frames)
    except UnsupportedInputError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for missing codecs / bad lengths
        msg = " ".join(str(e).split())
        raise CorruptInputError(src.path, f"cannot decode DICOM pixel data: {msg}") from e


def _guess_transfer_syntax(pydicom: Any, ds: Any) -> None:
    """A file without (0002,0010) in its meta group (or without a meta group): take the encoding pydicom read
    the dataset with, as its own pixel_array does, so that uncompressed pixels still decode."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    uid = pydicom.uid
    ts = uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    log.info("%s: no transfer syntax in the file meta; read as %s", getattr(ds, "filename", "?"), ts.name)


def _modality(frame: NDArray[Any], ds: Any) -> NDArray[np.float64]:
    """Stored values -> modality values (HU for CT): the Modality LUT sequence or slope/intercept."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_rescale

        return np.asarray(apply_rescale(frame, ds), dtype=np.float64)
    slope, intercept = _rescale_of(ds)
    return frame.astype(np.float64) * slope + intercept


def _voi_lut_u8(frame: NDArray[Any], ds: Any) -> NDArray[np.uint8]:
    """The file's VOI LUT sequence (pydicom's apply_voi_lut), its output depth scaled to 0..255."""
    from pydicom.pixels import apply_voi_lut

    out = apply_voi_lut(frame, ds, prefer_lut=True)
    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2]) or 16
    return (np.clip(out.astype(np.float64) / float(2**depth - 1), 0.0, 1.0) * 255.0).astype(np.uint8)


def _choose_window(
    win: Window | None, preset: str | None, ref: Any, use_file_window: bool, path: Path
) -> tuple[Window | None, str]:
    """(window, how): explicit or preset > the file's VOI LUT sequence > its WindowCenter/Width > min-max."""
    if win is not None:
        if preset is not None and str(ref.get("Modality", "CT")).upper() != "CT":
            log.warning("%s: CT window preset %r applied to modality %s", path, preset, ref.get("Modality", "?"))
        return win, f"preset {preset}" if preset else "given"
    if use_file_window and ref.get("VOILUTSequence"):
        return None, "file VOI LUT"
    if use_file_window and "WindowCenter" in ref and "WindowWidth" in ref:
        try:
            return Window(_first(ref.WindowCenter), _first(ref.WindowWidth)), "file"
        except (ValueError, TypeError) as e:
            log.warning("%s: ignoring the file's window (%s)", path, e)
    return None, "minmax"


def _gray_u8(
    sources: list[_Source], n: int, shape: tuple[int, int], win: Window | None, how: str, p: Path
) -> NDArray[np.uint8]:
    """Gray frames -> uint8 [n, H, W]: each frame rescaled and windowed as it is decoded."""
    out = np.empty((n, *shape), dtype=np.uint8)
    raw: NDArray[Any] | None = None  # min-max only: stored values until the volume's range is known
    lo, hi = np.inf, -np.inf
    t = 0
    for src in sources:
        for frame in _decode(src):
            if frame.shape != shape:
                raise CorruptInputError(src.path, f"decoded frame is {frame.shape}; its header declares {shape}")
            if how == "file VOI LUT":
                out[t] = _voi_lut_u8(frame, src.header)
            else:
                hu = _modality(frame, src.header)
                if not np.isfinite(hu).all():
                    raise CorruptInputError(src.path, "DICOM pixel data contains NaN or infinite values")
                if win is not None:
                    out[t] = apply_window(hu, win)
                else:
                    if raw is None:
                        raw = np.empty((n, *shape), dtype=frame.dtype)
                    raw[t] = frame
                    lo, hi = min(lo, float(hu.min())), max(hi, float(hu.max()))
            t += 1
    if raw is not None:
        # min-max over the whole volume, per frame: same arithmetic as over the stacked float64 volume
        t = 0
        for src in sources:
            for _ in src.frames:
                hu = _modality(raw[t], src.header)
                out[t] = 0 if hi <= lo else ((hu - lo) / (hi - lo) * 255.0).astype(np.uint8)
                t += 1
    return out


def _color_u8(sources: list[_Source], n: int, shape: tuple[int, int], p: Path) -> NDArray[np.uint8]:
    """Color frames (RGB, YBR converted, palette) -> uint8 [n, H, W, 3]."""
    out = np.empty((n, *shape, 3), dtype=np.uint8)
    wide: NDArray[Any] | None = None
    t = 0
    for src in sources:
        palette = str(src.header.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
        for frame in _decode(src):
            if palette:
                from pydicom.pixels import apply_color_lut

                try:
                    frame = apply_color_lut(frame, src.header)
                except Exception as e:  # noqa: BLE001
                    raise CorruptInputError(src.path, f"cannot apply the DICOM palette color table: {e}") from e
                if frame.dtype == np.uint16:
                    frame = (frame // 257).astype(np.uint8)  # 16-bit palette entries -> 8-bit
            if frame.shape != (*shape, 3):
                raise CorruptInputError(src.path, f"decoded frame is {frame.shape}; expected {(*shape, 3)}")
            if frame.dtype == np.uint8:
                out[t] = frame
            else:  # rare: >8-bit color; min-max over the volume as before
                if wide is None:
                    wide = np.empty((n, *shape, 3), dtype=frame.dtype)
                wide[t] = frame
            t += 1
    if wide is not None:
        lo, hi = float(wide.min()), float(wide.max())
        for k in range(n):
            out[k] = 0 if hi <= lo else ((wide[k].astype(np.float64) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return out


@_logs_warnings
def load_dicom(
    path: str | os.PathLike[str],
    window: WindowSpec = None,
    preset: str | None = None,
    use_file_window: bool = True,
    num_slices: int | None = None,
    series: str | None = None,
    limits: ReadLimits | None = None,
    max_slices: int | None = None,
) -> Media:
    """A DICOM file (single or multi-frame) or a series directory -> Media ("image" if 1 frame, else "3d").

    Gray pixels get the modality LUT (RescaleSlope/Intercept), then the window: `window` (center, width), a CT
    preset name or "center,width" > `preset` > the file's VOI LUT sequence > its WindowCenter/WindowWidth
    (first value) > min-max over the kept frames. MONOCHROME1 is inverted after windowing so that bright is
    dense. A directory: `series` picks a SeriesInstanceUID, else the series with the most files (a one-line
    note when there are several); slices sorted along the slice normal (ImagePositionPatient), else by
    InstanceNumber. `num_slices` keeps linspace(0, n-1, N) slices; above `limits.max_frames` the frames are
    sampled down by the same rule with a note. `max_slices` is the older name of `num_slices`.
    info: series_uid, sorted_by, window (the (center, width) used, "minmax", "file VOI LUT" or None for
    color), window_source, slices (indices kept), source_frames, photometric.
    """
    p = Path(path)
    _check_file(p)
    with pydicom_log_captured(p):  # pydicom logs odd values and failing decoders itself: keep that off stderr
        return _load(p, window, preset, use_file_window, num_slices if num_slices is not None else max_slices,
                     series, limits or ReadLimits())


def _load(
    p: Path,
    window: WindowSpec,
    preset: str | None,
    use_file_window: bool,
    num_slices: int | None,
    series: str | None,
    lim: ReadLimits,
) -> Media:
    pydicom = _lazy("pydicom", "volume", p)
    win = resolve_window(window, preset, p)
    if isinstance(window, str) and preset is None and window.strip().lower() in CT_PRESETS:
        preset = window.strip().lower()
    info: dict[str, Any] = {}
    if p.is_dir():
        entries, how, uid, notes = read_series(p, series, lim)
        info.update(files=len(entries), sorted_by=how, series_uid=uid)
        for msg in notes:
            log.warning("%s", msg)
        items = [(e.path, e.header, e.deflated, e.declared, k) for e in entries for k in range(e.declared.frames)]
    else:
        if series is not None:
            raise UnsupportedInputError(p, "series= picks a series in a directory; this is a single DICOM file")
        try:
            with pydicom_log_captured(p):
                header, deflated, has = read_header(pydicom, p, lim)
        except UnsupportedInputError:
            raise
        except Exception as e:  # noqa: BLE001 - InvalidDicomError, EOF, bad values...
            raise CorruptInputError(p, f"not a readable DICOM file: {' '.join(str(e).split())}") from e
        d = declared(header, p, has)
        info.update(sorted_by="frame order", series_uid=str(header.get("SeriesInstanceUID", "")))
        items = [(p, header, deflated, d, k) for k in range(d.frames)]
    idx, note = pick_slices(len(items), num_slices, lim.max_frames, p, "frames" if not p.is_dir() else "slices")
    if note:
        log.info("%s", note)
        info["note"] = note
    kept = [items[int(i)] for i in idx]
    ref_d: Declared = kept[0][3]
    ref = kept[0][1]
    if p.is_dir():
        for f, _, _, d, _ in kept:
            check_declared(d, 1, lim, f)
        lim.check(p, len(kept), ref_d.rows, ref_d.cols, 3 if ref_d.color else 1, what="series keeps")
    else:
        check_declared(ref_d, len(kept), lim, p)
    check_frame_size(ref_d.rows, ref_d.cols, p)
    sources: list[_Source] = []
    for f, header, deflated, _, k in kept:  # consecutive frames of one file decode in one pass
        if sources and sources[-1].path == f:
            sources[-1].frames.append(k)
        else:
            sources.append(_Source(f, header, deflated, [k]))
    shape = (ref_d.rows, ref_d.cols)
    info.update(slices=[int(i) for i in idx], source_frames=len(items), photometric=ref_d.photometric)
    if ref_d.color:
        frames = _color_u8(sources, len(kept), shape, p)
        info.update(window=None, window_source="color")
    else:
        used, how = _choose_window(win, preset, ref, use_file_window, p)
        u8 = _gray_u8(sources, len(kept), shape, used, how, p)
        if ref_d.photometric == "MONOCHROME1":
            np.subtract(255, u8, out=u8)
        frames = u8[..., None]
        info.update(window=(used.center, used.width) if used is not None else how, window_source=how)
    log.info("%s: %d of %d frame(s), sorted by %s, window %s", p, len(kept), len(items), info["sorted_by"],
             info["window"])
    modal = "image" if frames.shape[0] == 1 else "3d"
    return Media(np.ascontiguousarray(frames), modal, str(p), None, False, info)

