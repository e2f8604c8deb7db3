"""hulurt.preprocess: resize rule (3.3 table, PIL swap 3.4), normalisation (3.1), patchify order (3.5), merge
size selection (3.2), and bit-exact agreement with an upstream-style float pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hulurt import preprocess as pp
from hulurt.errors import UnsupportedInputError
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

# docs/model.md §3.3 worked examples: (H, W), m, N frames in the request -> (h, w), grid, tokens/frame, total
RESIZE_TABLE = [
    ((512, 512), 1, 1, (518, 518), (37, 37), 1369, 1369),
    ((224, 224), 1, 1, (224, 224), (16, 16), 256, 256),
    ((640, 480), 1, 1, (644, 476), (46, 34), 1564, 1564),
    ((2048, 2048), 1, 1, (1792, 1792), (128, 128), 16384, 16384),
    ((100, 100), 1, 1, (98, 98), (7, 7), 49, 49),
    ((512, 512), 2, 160, (280, 280), (20, 20), 100, 16000),
    ((512, 512), 2, 180, (252, 252), (18, 18), 81, 14580),
    ((512, 512), 2, 32, (504, 504), (36, 36), 324, 10368),
    ((360, 640), 2, 60, (336, 616), (24, 44), 264, 15840),
    ((720, 1280), 2, 128, (224, 420), (16, 30), 120, 15360),
]


@pytest.mark.parametrize("hw, m, n, size, grid, per_frame, total", RESIZE_TABLE)
def test_resize_table(hw, m, n, size, grid, per_frame, total):
    h, w = pp.target_size(*hw, factor=14 * m, total_frames=n)
    assert (h, w) == size
    gh, gw = h // 14, w // 14
    assert (gh, gw) == grid and gh % m == 0 and gw % m == 0
    assert (gh // m) * (gw // m) == per_frame
    assert per_frame * n == total


def test_round_half_to_even():
    # 7.5 patches -> 8 (even), 6.5 -> 6: Python round, not C round (trap 2)
    assert pp.target_size(105, 91 * 2, 14) == (112, 182)  # 105/14 = 7.5 -> 8; 182/14 = 13
    assert pp.target_size(91, 224, 14) == (84, 224)  # 91/14 = 6.5 -> 6


def test_pil_swap_case():
    # 11.3: a PIL image of width 640, height 480 gets (h, w) = (644, 476); the same pixels as numpy (476, 644)
    assert pp.plan_sizes([(480, 640)], [1], [1], [True]) == [(644, 476)]
    assert pp.plan_sizes([(480, 640)], [1], [1], [False]) == [(476, 644)]


def test_budget_is_shared_across_inputs():
    # trap 3: the same 512x512 image gets a smaller size when 31 other frames share the request
    alone = pp.plan_sizes([(512, 512)], [1], [2])
    shared = pp.plan_sizes([(512, 512), (512, 512)], [1, 31], [2, 2])
    assert alone == [(504, 504)] and shared == [(504, 504), (504, 504)]
    shared = pp.plan_sizes([(512, 512), (512, 512)], [1, 159], [2, 2])
    assert shared == [(280, 280), (280, 280)]


def test_mixed_merge_sizes_rejected():
    with pytest.raises(ValueError, match="batched_resize"):
        pp.plan_sizes([(64, 64), (64, 64)], [1, 4], [1, 2])


def test_merge_size_selection():
    assert pp.select_merge_sizes(["image", "image"]) == [1, 1]
    assert pp.select_merge_sizes(["image", "3d"]) == [2, 2]  # trap 4: images get m=2 next to a volume
    assert pp.select_merge_sizes(["video"], "original") == [2]
    with pytest.raises(ValueError):
        pp.select_merge_sizes(["audio"])


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(14, 5000),
    w=st.integers(14, 5000),
    m=st.sampled_from([1, 2]),
    n=st.integers(1, 2000),
)
def test_resize_properties(h, w, m, n):
    if max(h, w) / min(h, w) > pp.MAX_ASPECT:
        return
    f = 14 * m
    rh, rw = pp.target_size(h, w, f, n)
    assert rh % f == 0 and rw % f == 0 and rh > 0 and rw > 0
    budget = pp.MAX_TOKENS * f * f // n
    min_px = pp.MIN_TOKENS * f * f
    assert rh * rw >= min_px  # the min clamp always wins
    if rh * rw > budget:  # only allowed when the floor rule undershot the minimum and the clamp raised it
        assert budget < min_px * 4
    # aspect ratio: one common scale s puts both sides within one resize step f of (h*s, w*s)
    lo = max((rh - f) / h, (rw - f) / w)
    hi = min((rh + f) / h, (rw + f) / w)
    assert lo <= hi + 1e-12


def test_norm_lut_matches_upstream_arithmetic():
    u8 = np.arange(256, dtype=np.uint8)
    rescaled = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)  # BaseImageProcessor.rescale
    expected = (rescaled - np.float32(0.5)) / np.float32(0.5)  # normalize with mean = std = 0.5 in float32
    np.testing.assert_array_equal(pp.NORM_LUT, expected)
    assert pp.NORM_LUT[0] == -1.0 and pp.NORM_LUT[255] == 1.0


def _coded_frames(t: int, h: int, w: int) -> np.ndarray:
    """uint8 frames whose value encodes (t, row, col, channel) modulo 256 (distinct within a patch)."""
    tt, r, c, ch = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((tt * 7 + r * 3 + c * 5 + ch * 11) % 256).astype(np.uint8)


@pytest.mark.parametrize("m", [1, 2])
def test_patchify_order(m):
    t, gh, gw = 2, 4, 6
    frames = _coded_frames(t, gh * 14, gw * 14)
    out = pp.patchify(frames, m)
    assert out.shape == (t, (gh // m) * (gw // m), m * m, 588)
    flat = out.reshape(-1, 588)
    lut = pp.NORM_LUT
    for ti in range(t):
        for pr in range(gh):
            for pc in range(gw):
                bi, mi, bj, mj = pr // m, pr % m, pc // m, pc % m
                row = ((ti * (gh // m) + bi) * (gw // m) + bj) * m * m + mi * m + mj  # docs/model.md §3.5
                patch = frames[ti, pr * 14 : (pr + 1) * 14, pc * 14 : (pc + 1) * 14, :]  # (py, px, c)
                np.testing.assert_array_equal(flat[row], lut[patch.transpose(2, 0, 1).reshape(-1)])
    if m == 1:  # plain raster order
        np.testing.assert_array_equal(flat[1], lut[frames[0, :14, 14:28].transpose(2, 0, 1).reshape(-1)])
    else:  # group 0 = top-left 2x2 block: TL, TR, BL, BR
        np.testing.assert_array_equal(flat[2], lut[frames[0, 14:28, :14].transpose(2, 0, 1).reshape(-1)])


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 3),
    bh=st.integers(1, 4),
    bw=st.integers(1, 4),
    m=st.sampled_from([1, 2]),
    gray=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_patchify_roundtrip_and_gray(t, bh, bw, m, gray, seed):
    rng = np.random.default_rng(seed)
    c = 1 if gray else 3
    frames = rng.integers(0, 256, (t, bh * 14 * m, bw * 14 * m, c), dtype=np.uint8)
    out = pp.patchify(frames, m)
    assert out.shape == (t, bh * bw, m * m, 588) and out.dtype == np.float32
    back = pp.unpatchify(out, (t, bh * m, bw * m), m)
    rgb = np.repeat(frames, 3, axis=3) if gray else frames
    np.testing.assert_array_equal(back, pp.NORM_LUT[rgb].transpose(0, 3, 1, 2))


def test_patchify_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple"):
        pp.patchify(np.zeros((1, 28, 30, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="uint8"):
        pp.patchify(np.zeros((1, 28, 28, 3), np.float32), 1)


def test_gray_resize_equals_rgb_resize():
    """Resizing one 'L' channel then replicating == resizing the replicated 'RGB' (justifies the fast path)."""
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (2, 101, 77, 1), dtype=np.uint8)
    for size in [(56, 42), (224, 168), (98, 70)]:  # down, up, odd ratios
        a = pp.resize_frames(gray, size)
        b = pp.resize_frames(np.repeat(gray, 3, axis=3), size)
        np.testing.assert_array_equal(np.repeat(a, 3, axis=3), b)


def test_threaded_resize_equals_serial():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (5, 60, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        pp.resize_frames(frames, (56, 84), threads=1), pp.resize_frames(frames, (56, 84), 4)
    )


def _upstream_style(frames_rgb: list[np.ndarray], size_hw: tuple[int, int], m: int) -> np.ndarray:
    """Upstream's per-frame float pipeline (image_processing_hulumed.py `_preprocess`), written independently:
    PIL RGB bicubic -> float64 rescale -> float32 -> normalise -> CHW -> 8-D view/permute -> flatten."""
    h, w = size_hw
    chws = []
    for f in frames_rgb:
        img = Image.fromarray(f).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        x = (np.asarray(img).astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.float32(0.5)) / np.float32(0.5)
        chws.append(x.transpose(2, 0, 1))
    x = np.stack(chws)  # (T, 3, h, w)
    t, gh, gw = x.shape[0], h // 14, w // 14
    x = x.reshape(t, 3, gh // m, m, 14, gw // m, m, 14).transpose(0, 2, 5, 3, 6, 1, 4, 7)
    return x.reshape(t * gh * gw, 588)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("gray", [False, True])
def test_bit_exact_vs_upstream_style(m, gray):
    rng = np.random.default_rng(5)
    c = 1 if gray else 3
    frames = rng.integers(0, 256, (3, 90, 130, c), dtype=np.uint8)
    size = pp.plan_sizes([(90, 130)], [3], [m])[0]
    ours = pp.preprocess_frames(frames, size, m)
    rgb = [np.repeat(f, 3, axis=2) if gray else f for f in frames]
    np.testing.assert_array_equal(ours.flat, _upstream_style(rgb, size, m))
    assert ours.flat.std() > 1e-2


def test_frame_size_checks():
    with pytest.raises(UnsupportedInputError, match="at least 14"):
        pp.check_frame_size(1, 1, "x.png")
    with pytest.raises(UnsupportedInputError, match="aspect"):
        pp.check_frame_size(14, 3000, "x.png")
    pp.check_frame_size(14, 14, "x.png")


def test_min_clamp_and_huge():
    # tiny but valid image: clamped up to 16 merged tokens
    h, w = pp.target_size(14, 14, 14)
    assert h * w >= 16 * 196 and (h, w) == (56, 56)
    # the lone-image maximum: 16384 tokens
    h, w = pp.target_size(4000, 4000, 14)
    assert (h // 14) * (w // 14) <= 16384 and math.isclose(h, w)
