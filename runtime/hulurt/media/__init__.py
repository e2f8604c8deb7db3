"""Readers: image files (Pillow), DICOM files/series (pydicom), NIfTI volumes (nibabel), video (decord, PyAV).

Each returns a `Media`: uint8 frames [T, H, W, C] (C = 1 gray or 3 RGB) plus modal, timestamps and the
PIL-size-quirk flag of docs/model.md §3.4. Reader libraries are optional extras, imported when used.
One module per format (image, dicom, nifti, video); `common` holds the shared types and checks, `window`
the intensity windows. This package re-exports the public API, so `from hulurt.media import ...` is stable.
"""

from __future__ import annotations

import os
from typing import Any

from hulurt.media.common import (
    DEFAULT_MAX_PIXELS,
    DICOM_EXTS,
    IMAGE_EXTS,
    MAX_FRAMES_HARD,
    MAX_PIXELS_PER_FRAME,
    NIFTI_EXTS,
    VIDEO_EXTS,
    CorruptInputError,
    Media,
    MissingExtraError,
    ReadLimits,
    kind_of,
    pick_slices,
)
from hulurt.media.dicom import load_dicom
from hulurt.media.image import image_from_array, load_image
from hulurt.media.nifti import NIFTI_AXES, NIFTI_PROFILES, ORIGINAL_NIFTI_SLICES, load_nifti
from hulurt.media.video import VIDEO_PROFILES, frames_to_media, load_video, sample_frames, sample_frames_hf
from hulurt.media.window import CT_PRESETS, Window, apply_window, minmax_u8, resolve_window

__all__ = [
    "CT_PRESETS",
    "DEFAULT_MAX_PIXELS",
    "DICOM_EXTS",
    "IMAGE_EXTS",
    "MAX_FRAMES_HARD",
    "MAX_PIXELS_PER_FRAME",
    "NIFTI_AXES",
    "NIFTI_EXTS",
    "NIFTI_PROFILES",
    "ORIGINAL_NIFTI_SLICES",
    "VIDEO_EXTS",
    "VIDEO_PROFILES",
    "CorruptInputError",
    "Media",
    "MissingExtraError",
    "ReadLimits",
    "Window",
    "apply_window",
    "frames_to_media",
    "image_from_array",
    "kind_of",
    "load_dicom",
    "load_image",
    "load_media",
    "load_nifti",
    "load_video",
    "minmax_u8",
    "pick_slices",
    "resolve_window",
    "sample_frames",
    "sample_frames_hf",
]


def load_media(path: str | os.PathLike[str], **options: Any) -> Media:
    """Read any supported file; `options` go to the matching reader (load_image/dicom/nifti/video)."""
    readers = {"image": load_image, "dicom": load_dicom, "nifti": load_nifti, "video": load_video}
    return readers[kind_of(path)](path, **options)  # type: ignore[operator]
