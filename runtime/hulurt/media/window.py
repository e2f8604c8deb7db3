"""Intensity windows: CT presets, explicit (center, width), linear windowing and min-max scaling to uint8."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError

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


WindowSpec = Union[Window, tuple[float, float], str, None]


def resolve_window(window: WindowSpec, preset: str | None, path: object) -> Window | None:
    """An explicit window, a CT preset name, or None (the reader then uses the file's own VOI or min-max).

    `window` may be a Window, a (center, width) pair, a preset name ("lung") or a "center,width" string
    (the CLI's --window); `preset` is the older keyword for a preset name.
    """
    if window is not None and preset is not None:
        raise UnsupportedInputError(path, "give either an explicit window or a preset name, not both")
    if isinstance(window, str):
        text = window.strip()
        if text.lower() in CT_PRESETS:
            preset, window = text, None
        else:
            parts = text.replace(":", ",").split(",")
            if len(parts) != 2:
                raise UnsupportedInputError(
                    path,
                    f"window {window!r}: expected a preset ({', '.join(sorted(CT_PRESETS))}) or CENTER,WIDTH",
                )
            window = (parts[0], parts[1])  # type: ignore[assignment]
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
        return Window(float(window[0]), float(window[1]))  # type: ignore[arg-type, index]
    except (TypeError, ValueError, IndexError) as e:
        raise UnsupportedInputError(
            path, f"window {window!r}: expected (center, width) with width > 0 ({e})"
        ) from e
