"""The numpy token-reduction oracle against upstream's rule written with torch bf16 arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hulurt.reduction import compaction, frame_token_diffs, keep_mask, round_bf16


def _upstream_torch_mask(frames: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The pruning rule of docs/model.md §6.2 (difference, threshold, keep), in torch bf16 as upstream runs it
    (hulumed_arch.py)."""
    x = torch.from_numpy(frames).to(torch.bfloat16)  # (T, nb, D)
    d = (x[1:] - x[:-1]).abs().mean(dim=-1)  # bf16 result, fp32 accumulation
    d = (d * 255) / 255  # upstream's scale round trip, each step rounded to bf16
    first = torch.full_like(d[:1], threshold + 1)  # frame 0 forced kept
    keep = torch.cat([first, d], dim=0) > threshold
    empty = keep.sum(dim=1) == 0
    keep[empty, 0] = True
    return keep.numpy()


def _pixel_frames(rng: np.random.Generator, t: int, nb: int, d: int) -> np.ndarray:
    """Frames of normalised 8-bit pixels with small frame-to-frame changes (many tokens near the threshold)."""
    base = rng.integers(0, 256, size=(1, nb, d))
    steps = rng.integers(-14, 15, size=(t, nb, d)) * (rng.random((t, nb, 1)) < 0.6)
    u8 = np.clip(base + np.cumsum(steps, axis=0), 0, 255)
    return (u8 / 127.5 - 1).astype(np.float32)


def test_round_bf16_matches_torch() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10_000),
                        np.array([0.0, -0.0, 1.0, 0.1, 65504.0, 1e-40], np.float32)]).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(round_bf16(x), want)


@pytest.mark.parametrize("m", [1, 2])
def test_bf16_mask_matches_upstream_torch(m: int) -> None:
    rng = np.random.default_rng(m)
    frames = _pixel_frames(rng, t=9, nb=40, d=m * m * 588)
    ours = keep_mask(frames, threshold=0.1, min_tokens=1, mode="bf16")
    ref = _upstream_torch_mask(frames)
    # not a trivial case: some tokens dropped, some kept after frame 0
    assert 0 < ours[1:].sum() < ours[1:].size
    np.testing.assert_array_equal(ours, ref)


def test_fp32_diff_is_exact_mean() -> None:
    rng = np.random.default_rng(3)
    frames = _pixel_frames(rng, t=4, nb=10, d=2352)
    d = frame_token_diffs(frames, mode="fp32")
    exact = np.abs(frames[1:].astype(np.float64) - frames[:-1]).mean(axis=2)
    np.testing.assert_allclose(d, exact, rtol=2e-7, atol=0)


def test_known_answers_static_and_single_block() -> None:
    rng = np.random.default_rng(4)
    f0 = (rng.integers(0, 256, size=(6, 2352)) / 127.5 - 1).astype(np.float32)
    f1 = f0.copy()
    f1[3] = np.clip(f1[3] + 0.5, -1, 1)  # one merged token changes a lot
    frames = np.stack([f0, f1, f1])  # frame 2 is static
    keep = keep_mask(frames)
    np.testing.assert_array_equal(keep[0], np.ones(6, bool))
    np.testing.assert_array_equal(keep[1], np.eye(6, dtype=bool)[3])
    np.testing.assert_array_equal(keep[2], np.eye(6, dtype=bool)[0])  # min_tokens=1: top-left forced on
    idx, counts = compaction(keep)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 5, 9, 12])
    np.testing.assert_array_equal(counts, [6, 1, 1])


def test_single_frame_keeps_everything() -> None:
    frames = np.zeros((1, 5, 588), np.float32)
    assert keep_mask(frames).all()


def test_kept_rows_and_positions_apply_one_mask() -> None:
    """The one way the keep mask is applied (runtime loop, reference model, verify): rows of the kept merged
    tokens in frame-major order, and the prompt positions that stay."""
    from hulurt.reduction import kept_positions, kept_rows

    feats = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # [T=2, nb=3, H=2]
    keep = np.array([[True, True, True], [False, True, False]])
    np.testing.assert_array_equal(kept_rows(feats, keep), feats.reshape(6, 2)[[0, 1, 2, 4]])
    assert kept_rows(feats, None).shape == (6, 2)
    np.testing.assert_array_equal(kept_rows(torch.from_numpy(feats), keep).numpy(), kept_rows(feats, keep))
    ids = np.array([7, 9, 9, 9, 9, 9, 9, 8])  # text, six image ids, text
    stay = kept_positions(ids, 9, keep)
    assert stay.tolist() == [True, True, True, True, False, True, False, True]
    with pytest.raises(ValueError, match="5 image ids"):
        kept_positions(ids[2:], 9, keep)


@pytest.mark.parametrize("mode", ["bf16", "fp32"])
@pytest.mark.parametrize("pass_values", [1, 3 * 7 * 12 + 1, 10**9])
def test_diffs_in_passes_equal_the_whole_input(mode: str, pass_values: int, monkeypatch) -> None:
    """frame_token_diffs works a few frames per pass (bounded memory on a thin-slice CT): one frame per pass,
    three, or all at once give the same bits."""
    from hulurt import reduction

    x = _pixel_frames(np.random.default_rng(11), 10, 7, 12)
    whole = frame_token_diffs(x, mode)
    monkeypatch.setattr(reduction, "DIFF_PASS_VALUES", pass_values)
    got = frame_token_diffs(x, mode)
    assert got.shape == (9, 7) and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), whole.view(np.uint32))
    assert frame_token_diffs(x[:1], mode).shape == (0, 7)
