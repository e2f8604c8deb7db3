"""What every reader shares: the Media type, error types, file checks, extension-based dispatch, lazy imports
of the optional reader libraries and warning capture."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError

log = logging.getLogger("hulurt.media")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DICOM_EXTS = (".dcm", ".dicom", ".ima")
NIFTI_EXTS = (".nii", ".nii.gz")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif")

MAX_PIXELS_PER_FRAME = 89_478_485  # Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
MAX_FRAMES_HARD = 4096  # far above any budget that still gives >= min_tokens per frame
DEFAULT_MAX_PIXELS = 1 << 28  # 268M samples: a 1024-slice 512x512 CT; ~0.5 GB at 16 bits (ReadLimits)


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
    pil_size_swap: bool = False  # upstream read this input's size as PIL (width, height) (docs/model.md §3.4)
    info: dict[str, Any] = field(default_factory=dict)  # reader details (fps, spacing, window used, ...)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


@dataclass(frozen=True)
class ReadLimits:
    """Ceilings a reader checks against a file's header before it decodes any pixel (docs/inputs.md).

    max_pixels: samples (frames x rows x columns x channels) the reader may have to decode or inflate for one
    input -- the configurable cap. max_frame_pixels: rows x columns of one frame. max_frames: frames kept; a
    volume with more slices is sampled down to it by upstream's linspace rule (the bundle's n_frames range,
    set by the API from the manifest; None = no sampling unless asked).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frame_pixels: int = MAX_PIXELS_PER_FRAME
    max_frames: int | None = None

    def check(self, path: object, frames: int, rows: int, cols: int, samples: int = 1, what: str = "") -> None:
        """Refuse a declared size above the limits (one line naming the file, the declared size and the cap)."""
        desc = f"{what or 'declares'} {frames} frame(s) of {rows}x{cols}" + (f"x{samples}" if samples > 1 else "")
        if min(frames, rows, cols, samples) < 1:
            raise CorruptInputError(path, f"header {desc}; every size must be at least 1")
        if rows * cols > self.max_frame_pixels:
            raise CorruptInputError(
                path, f"header {desc} = {rows * cols:,} pixels per frame; the limit is {self.max_frame_pixels:,}"
            )
        total = frames * rows * cols * samples
        if total > self.max_pixels:
            raise CorruptInputError(
                path,
                f"header {desc} = {total:,} samples to decode; the limit is {self.max_pixels:,} "
                "(refused before decoding; raise it with max_pixels if this input is genuine)",
            )


def check_num_slices(num_slices: int, max_frames: int | None, source: object) -> None:
    """An explicit slice count must be positive and within the bundle's frames per input."""
    if num_slices < 1:
        raise UnsupportedInputError(source, f"num_slices={num_slices}; expected a positive number")
    if max_frames is not None and num_slices > max_frames:
        raise UnsupportedInputError(
            source, f"num_slices={num_slices} is above the {max_frames} frames this bundle takes per input"
        )


def pick_slices(
    n: int, num_slices: int | None, max_frames: int | None, source: object, unit: str = "slices"
) -> tuple[NDArray[np.int64], str | None]:
    """Indices of the slices to keep, by upstream's linspace(0, n - 1, N) rule (cast down to integers).

    num_slices: asked for explicitly (never more than n: all slices then). Else, when n is above max_frames
    (the bundle's frame range), sample down to max_frames and return a one-line note saying so.
    """
    if num_slices is not None:
        check_num_slices(num_slices, max_frames, source)
        if num_slices < n:
            return np.linspace(0, n - 1, num_slices).astype(np.int64), None
        return np.arange(n, dtype=np.int64), None
    if max_frames is not None and n > max_frames:
        note = (
            f"{source}: {n} {unit} sampled to {max_frames} by linspace(0, {n - 1}, {max_frames}) to fit the "
            f"bundle's frame limit (choose with num_slices / --slices)"
        )
        return np.linspace(0, n - 1, max_frames).astype(np.int64), note
    return np.arange(n, dtype=np.int64), None


def _lazy(module: str, extra: str, path: object) -> Any:
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
