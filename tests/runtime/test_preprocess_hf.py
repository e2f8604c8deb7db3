"""Parity with transformers' own VideoLLaMA3 image processor (PIL backend) on real files: identical pixel arrays
and grids, m = 1 and m = 2.

Where transformers applies: its processor has the same Pillow-bicubic -> float64 rescale -> float32 normalise ->
merge-grouped patchify as Hulu-Med's, once constructed with Hulu-Med's constants (mean = std = 0.5 instead of its
CLIP-style defaults; min_pixels = 16 f^2 and max_pixels = the request budget 16384 f^2 // N instead of its own
56^2 .. 28^2*1280). Its resize rule (smart_resize) differs from Hulu-Med's 3.3 rule in three places: it checks
the min clamp only when the max step did not fire (elif), clamps each side to >= f after the floor, and rejects
aspect ratios above 200; it reads sizes correctly (no PIL swap) and resizes each image on its own (no shared
budget). For ordinary sizes the targets coincide, which `plan_sizes` is asserted to reproduce here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hulurt import preprocess as pp
from hulurt.media import load_dicom, load_image, load_nifti, load_video
from PIL import Image

pytestmark = pytest.mark.hf
VideoLlama3ImageProcessorPil = pytest.importorskip(
    "transformers.models.video_llama_3.image_processing_pil_video_llama_3"
).VideoLlama3ImageProcessorPil

PYDICOM_DATA = Path(pytest.importorskip("pydicom").__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(pytest.importorskip("nibabel").__file__).parent / "tests" / "data"


def _hf(frames: np.ndarray, m: int, n_total: int):
    f = 14 * m
    proc = VideoLlama3ImageProcessorPil(
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        merge_size=m,
        size={"shortest_edge": pp.MIN_TOKENS * f * f, "longest_edge": pp.MAX_TOKENS * f * f // n_total},
    )
    rgb = [np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in frames]
    return proc(images=rgb, return_tensors="np")


def _check(frames: np.ndarray, m: int) -> None:
    t = frames.shape[0]
    size = pp.plan_sizes([frames.shape[1:3]], [t], [m])[0]
    ours = pp.preprocess_frames(frames, size, m)
    ref = _hf(frames, m, t)
    np.testing.assert_array_equal(ref["image_grid_thw"], [[1, *ours.grid_thw[1:]]] * t)
    np.testing.assert_array_equal(ours.flat, ref["pixel_values"])
    assert ours.flat.std() > 1e-2


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:300, 0:420]
    img = np.stack([(xx * 255 // 419), (yy * 255 // 299), rng.integers(0, 256, (300, 420))], -1).astype(
        np.uint8
    )
    p = tmp_path_factory.mktemp("png") / "gen.png"
    Image.fromarray(img).save(p)
    return p


@pytest.mark.parametrize("m", [1, 2])
def test_png(png, m):
    _check(load_image(png, pil_size_swap=False).frames, m)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm"])
@pytest.mark.parametrize("m", [1, 2])
def test_pydicom_files(name, m):
    _check(load_dicom(PYDICOM_DATA / name).frames, m)


@pytest.mark.parametrize("m", [1, 2])
def test_nibabel_volume_hf_profile(m):
    vol = load_nifti(NIBABEL_DATA / "anatomical.nii", profile="hf", axis=2)
    assert not vol.pil_size_swap
    _check(vol.frames, m)


def test_nibabel_volume_original_profile_swap_is_the_only_difference():
    """Original profile: 180 linspace slices and the PIL swap; with the target transposed back, transformers
    (which reads sizes correctly) sees the same pixels."""
    vol = load_nifti(NIBABEL_DATA / "anatomical.nii", profile="original", axis=2)
    t, h, w = vol.frames.shape[:3]
    assert vol.pil_size_swap and t == 180 and (h, w) == (33, 41)
    swapped = pp.plan_sizes([(h, w)], [t], [2], [True])[0]
    straight = pp.plan_sizes([(h, w)], [t], [2], [False])[0]
    assert swapped == straight[::-1] and swapped != straight  # non-square: the quirk transposes the target
    _check(vol.frames, 2)


@pytest.mark.parametrize("m", [1, 2])
def test_pyav_mp4(tmp_path, m):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 96, 72, "yuv420p"
        for i in range(16):
            a = np.full((72, 96, 3), 40, np.uint8)
            a[10:40, (i * 5) % 80 : (i * 5) % 80 + 16] = (200, 90, 30)
            for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    _check(load_video(path, fps=2, max_frames=8).frames, m)
