"""Video files (decord, else PyAV), frame sampling rules of both upstream profiles, in-memory frames."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError
from hulurt.media.common import MAX_FRAMES_HARD, CorruptInputError, Media, _check_file, _lazy, _logs_warnings
from hulurt.preprocess import check_frame_size


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
    """The HF processor's rule (processing_hulumed.py load_video, docs/model.md §3.7), in our own words:
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
                for k in np.flatnonzero(idx == i):
                    out[int(k)] = rgb
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
    """A video file -> Media of modal "video" with timestamps (docs/model.md §3.7); decord, else PyAV.

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
