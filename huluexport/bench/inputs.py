"""The benchmark's request: synthetic frames (or the user's files). Both sides preprocess it in every run
with the runtime's own input code (hulurt.api.Model.media_inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from huluexport.bench.config import BenchConfig
from huluexport.errors import ConfigError

PRESETS = ("text", "image", "volume", "video")


def synthetic_frames(preset: str, frames: int, resolution: int, seed: int = 0) -> np.ndarray | None:
    """uint8 frames [T, H, W, 3] for a preset (None for text). Smooth structure + noise, so images are not
    constant; for volume/video consecutive frames share most of the picture and differ in a moving region,
    so token reduction keeps some tokens and drops others."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if preset == "text":
        return None
    rng = np.random.default_rng(seed)
    t = 1 if preset == "image" else frames
    h = w = resolution
    if preset == "video":
        h = max(28, (resolution * 9 // 16) // 2 * 2)  # 16:9 frames
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 127 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)  # [H, W]
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for k in range(t):
        f = base.copy()
        cy, cx = (h * (0.2 + 0.6 * k / max(t - 1, 1)), w * 0.5)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(h, w) * 0.15) ** 2  # a moving disc
        f[blob] += 80
        f += rng.normal(0, 4, size=f.shape)
        out[k] = np.clip(f, 0, 255).astype(np.uint8)[..., None]  # gray -> [H, W, 1] broadcast to 3 channels
    return out


def write_synthetic_files(preset: str, frames: np.ndarray | None, out_dir: Path) -> list[Path]:
    """Write the frames as the file a user would pass: PNG (image), NIfTI (volume), MP4 (video)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if frames is None:
        return []
    if preset == "image":
        from PIL import Image

        p = out_dir / "image.png"
        Image.fromarray(frames[0]).save(p)
        return [p]
    if preset == "volume":
        import nibabel as nib

        p = out_dir / "volume.nii.gz"
        vol = (
            frames[..., 0].transpose(1, 2, 0).astype(np.int16)
        )  # (T, H, W) -> (H, W, T): axial slices on axis 2
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
        return [p]
    import av

    p = out_dir / "video.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("mpeg4", rate=1)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return [p]


# The request


class ByteIds:
    """Text <-> ids for bundles without a tokenizer (random-weight builds): one id per UTF-8 byte, as the
    byte-level base of Qwen's BPE. Only used to make prompts and print tokens; it never changes timings."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


def request_media(cfg: BenchConfig) -> list[Any]:
    """The request's visual inputs: the user's files (read inside the timed preprocess stage, by hulurt's
    readers), or a synthetic preset as already-decoded frames (hulurt.media.Media)."""
    if cfg.media_files:
        return [Path(p) for p in cfg.media_files]
    from hulurt.media import Media

    frames = synthetic_frames(cfg.preset, cfg.frames, cfg.resolution, cfg.seed)
    if frames is None:
        return []
    modal = {"image": "image", "volume": "3d", "video": "video"}[cfg.preset]
    stamps = tuple(float(k) for k in range(frames.shape[0])) if modal == "video" else None  # 1 fps
    return [Media(frames, modal, f"synthetic {cfg.preset}", timestamps=stamps)]
