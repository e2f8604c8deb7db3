"""What `huluexport bench` was asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    preset: str = "image"
    frames: int = 8
    resolution: int = 224
    media_files: tuple[Path, ...] = ()  # image / DICOM / NIfTI / video files instead of a preset
    prompt: str = "Describe the findings."
    max_new_tokens: int = 16
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    compare_reference: bool = False
    checkpoint: Path | None = None
    seed: int = 0
    target: str = "cpu"  # huluexport/devices.py: whose memory bandwidth bounds the roofline
    extra: dict[str, Any] = field(default_factory=dict)
