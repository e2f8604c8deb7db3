"""A DICOM study or series folder: every file's header read without pixels, grouped by SeriesInstanceUID, one
series chosen (by UID, else the one with the most files, with a note), checked for one slice size and one
kind (gray or color), and sorted along the slice normal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hulurt.errors import UnsupportedInputError
from hulurt.media.common import MAX_FRAMES_HARD, CorruptInputError, ReadLimits, _lazy, log
from hulurt.media.dicom_header import Declared, declared, pydicom_log_captured, read_header

MAX_SERIES_FILES = 4 * MAX_FRAMES_HARD  # headers read from one folder at most (each costs a file open)


@dataclass(frozen=True)
class Entry:
    """One file of a series: its header (no pixel values) and what it declares."""

    path: Path
    header: Any
    deflated: bool
    declared: Declared


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


def _sort(entries: list[Entry]) -> tuple[list[Entry], str]:
    positions = [_slice_position(e.header) for e in entries]
    if all(p is not None for p in positions) and len(set(positions)) == len(positions):
        order = sorted(range(len(entries)), key=lambda i: positions[i])  # type: ignore[arg-type,return-value]
        return [entries[i] for i in order], "ImagePositionPatient"
    numbers = [e.header.get("InstanceNumber", None) for e in entries]
    if all(n is not None and str(n).strip() for n in numbers):
        try:
            order = sorted(range(len(entries)), key=lambda i: (int(numbers[i]), entries[i].path.name))
            return [entries[i] for i in order], "InstanceNumber"
        except (TypeError, ValueError):
            pass
    return entries, "file name"


def _headers(directory: Path, limits: ReadLimits) -> list[Entry]:
    pydicom = _lazy("pydicom", "volume", directory)
    files = sorted(f for f in directory.iterdir() if f.is_file() and not f.name.startswith("."))
    if len(files) > MAX_SERIES_FILES:
        raise UnsupportedInputError(
            directory, f"directory holds {len(files)} files; at most {MAX_SERIES_FILES} are read as one series"
        )
    entries = []
    for f in files:
        if f.name.upper() == "DICOMDIR":
            continue
        try:
            with pydicom_log_captured(f):
                header, deflated, has = read_header(pydicom, f, limits)
            if "SOPClassUID" not in header and "Rows" not in header:
                raise ValueError("no DICOM image header")
            d = declared(header, f, has)
        except UnsupportedInputError:
            raise
        except Exception as e:  # noqa: BLE001 - InvalidDicomError and friends: skip non-DICOM files in the folder
            log.info("skipping %s in DICOM folder %s: %s", f.name, directory, e)
            continue
        if not d.has_pixels:
            log.info("skipping %s in DICOM folder %s: no pixel data", f.name, directory)
            continue
        entries.append(Entry(f, header, deflated, d))
    if not entries:
        raise CorruptInputError(directory, "directory holds no readable DICOM image files")
    return entries


def read_series(
    directory: Path, series: str | None, limits: ReadLimits
) -> tuple[list[Entry], str, str, list[str]]:
    """(entries sorted along the slice normal, how they were sorted, the series UID, notes to print)."""
    entries = _headers(directory, limits)
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(str(e.header.get("SeriesInstanceUID", "")), []).append(e)
    notes = []
    if series is not None:
        if series not in groups:
            listing = ", ".join(f"{u or '(none)'} ({len(g)} files)" for u, g in sorted(groups.items()))
            raise UnsupportedInputError(directory, f"no series {series!r} here; the folder holds {listing}")
        uid = series
    elif len(groups) == 1:
        uid = next(iter(groups))
    else:
        ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        if len(ranked[0][1]) == len(ranked[1][1]):
            listing = ", ".join(f"{u or '(none)'} ({len(g)} files)" for u, g in ranked)
            raise UnsupportedInputError(
                directory,
                f"directory holds {len(groups)} DICOM series of equal size ({listing}); pick one with "
                "series= / --series UID",
            )
        uid = ranked[0][0]
        others = ", ".join(f"{u} ({len(g)})" for u, g in ranked[1:])
        notes.append(
            f"{directory}: {len(groups)} DICOM series here; using the largest, {uid} ({len(ranked[0][1])} files); "
            f"others: {others} (pick one with series= / --series UID)"
        )
    chosen = groups[uid]
    sizes: dict[tuple[int, int], str] = {}
    kinds: dict[str, str] = {}
    for e in chosen:
        sizes.setdefault((e.declared.rows, e.declared.cols), e.path.name)
        kinds.setdefault("color" if e.declared.color else "gray", e.path.name)
    if len(sizes) > 1:
        raise UnsupportedInputError(
            directory,
            f"series mixes slice sizes {sorted(sizes)} (e.g. {sorted(sizes.values())}); expected one size",
        )
    if len(kinds) > 1:
        raise UnsupportedInputError(
            directory,
            f"series mixes gray and color images (e.g. {kinds['gray']}, {kinds['color']}); expected one kind",
        )
    ordered, how = _sort(chosen)
    return ordered, how, uid, notes
