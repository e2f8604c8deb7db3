"""What a planned request holds: text only, an image, a volume or a video, and the visual tokens it makes.

The resize rule is the runtime's own (`hulurt.preprocess.target_size`), so planner and runtime cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hulurt.preprocess import target_size

from huluexport.config import HuluConfig
from huluexport.errors import ConfigError


@dataclass(frozen=True)
class InputSpec:
    """One request: text only, one 2-D image, an N-slice volume or an N-frame video, plus its text."""

    kind: str = "text"  # text | image | volume | video
    frames: int = 0
    height: int = 0
    width: int = 0
    prompt_tokens: int = 96  # question + chat template (estimate of a typical clinical question)
    max_new_tokens: int = 512
    kept_fraction: float = 1.0  # share of visual tokens token reduction keeps (1.0: none dropped)

    @property
    def merge(self) -> int:
        return 1 if self.kind == "image" else 2

    def separator_tokens(self) -> int:
        # volume: "," between slice placeholders; video: "Time 12.0s:" ~6 tokens per frame (estimate)
        return {"text": 0, "image": 0, "volume": self.frames, "video": 6 * self.frames}[self.kind]


def image_input(spec: str, **kw: Any) -> InputSpec:
    """Parse `--image WxH` (e.g. 512x512)."""
    try:
        w_s, h_s = spec.lower().split("x")
        w, h = int(w_s), int(h_s)
    except ValueError:
        raise ConfigError(f"--image {spec!r}: expected WIDTHxHEIGHT in pixels, e.g. 512x512") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"--image {spec!r}: width and height must be positive")
    return InputSpec(kind="image", frames=1, height=h, width=w, **kw)


@dataclass(frozen=True)
class VisualLoad:
    frames: int
    resized: tuple[int, int]
    patches_per_frame: int
    tokens_per_frame: int

    @property
    def tokens(self) -> int:
        return self.frames * self.tokens_per_frame


def visual_load(cfg: HuluConfig, inp: InputSpec) -> VisualLoad:
    if inp.kind == "text":
        return VisualLoad(0, (0, 0), 0, 0)
    if inp.frames <= 0 or inp.height <= 0 or inp.width <= 0:
        raise ConfigError(f"{inp.kind} input needs frames, height and width > 0; got {inp}")
    pp = cfg.preprocess
    m = inp.merge
    h, w = target_size(inp.height, inp.width, pp.patch * m, inp.frames, pp.min_tokens, pp.max_tokens)
    gh, gw = h // pp.patch, w // pp.patch
    return VisualLoad(inp.frames, (h, w), gh * gw, (gh // m) * (gw // m))
