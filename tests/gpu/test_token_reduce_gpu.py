"""CUDA token reduction vs the numpy oracle: masks, compaction and gathered rows must be EXACT (no tolerance).

Runs the kernels through hulurt.cuda_reduce (ctypes) on PyTorch CUDA tensors. Skipped, with the reason, on a
machine without a CUDA device (tests/conftest.py); never reported as passed there.
"""

from __future__ import annotations

import numpy as np
import pytest
from hulurt import cuda_reduce, reduction
from hulurt.preprocess import NORM_LUT
from hulurt.testing import near_threshold_volume

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")

ALGOS = ("auto", "pair", "stream")


def _u8_volume(rng: np.random.Generator, t: int, g: int, mm: int) -> np.ndarray:
    return near_threshold_volume(rng, t, g, (mm, 588))  # [T, G, mm, 588] uint8


def _normed(u8: np.ndarray) -> np.ndarray:
    return NORM_LUT[u8]  # the preprocessing's exact u8 -> [-1, 1] float32


def _edge_cases() -> list[tuple[str, np.ndarray, float, int]]:
    """(name, pixels [T, G, M, 588] float32, threshold, min_tokens)."""
    rng = np.random.default_rng(6)
    cases = []
    cases.append(("one_frame", _normed(_u8_volume(rng, 1, 6, 4)), 0.1, 1))
    same = np.repeat(_normed(_u8_volume(rng, 1, 7, 4)), 5, axis=0)
    cases.append(("identical_frames", same, 0.1, 1))
    cases.append(("identical_frames_min3", same, 0.1, 3))
    cases.append(("identical_frames_min_over_nb", same, 0.1, 50))
    cases.append(("min_tokens_0", same, 0.1, 0))
    cases.append(
        ("all_different", _normed(rng.integers(0, 256, size=(4, 9, 4, 588), dtype=np.uint8)), 0.1, 1)
    )
    # exactly at the threshold: |diff| = 0.125 everywhere -> mean == 0.125, dropped; half the values +1/128 more
    at = np.full((3, 4, 4, 588), 0.25, dtype=np.float32)
    at[1] = 0.375
    at[2, :2] = 0.5
    at[2, 2:] = 0.5
    at[2, 2:, :, :294] = 0.375 - 0.125 - 1.0 / 128.0  # tokens 2, 3: mean |diff| = 0.125 + 1/256 -> kept
    cases.append(("at_threshold", at, 0.125, 0))
    # bf16 ties: 1 + 3*2^-8 rounds up to 1.015625 (to even); truncation would give 1.0078125 and drop the token
    tie = np.zeros((2, 3, 1, 588), dtype=np.float32)
    tie[1] = 1.0 + 3.0 / 256.0
    cases.append(("bf16_ties", tie, 1.01, 0))
    cases.append(("odd_grid_3x5_m2", _normed(_u8_volume(rng, 3, 15, 4)), 0.1, 1))
    cases.append(("odd_grid_7x1_m1", _normed(_u8_volume(rng, 5, 7, 1)), 0.1, 1))
    cases.append(("random_m1", _normed(_u8_volume(rng, 9, 33, 1)), 0.1, 1))
    cases.append(("random_m2", _normed(_u8_volume(rng, 9, 33, 4)), 0.1, 2))
    cases.append(("random_m2_many_frames", _normed(_u8_volume(rng, 70, 5, 4)), 0.1, 1))
    return cases


EDGE = _edge_cases()


def _run(px: np.ndarray | torch.Tensor, threshold: float, min_tokens: int, mode: str, algo: str):
    x = torch.as_tensor(px).cuda().contiguous() if isinstance(px, np.ndarray) else px
    t, g = x.shape[0], x.shape[1]
    keep = torch.full((t, g), 0xAB, dtype=torch.uint8, device="cuda")  # poison: every entry must be written
    idx = torch.full((t * g,), -7, dtype=torch.int64, device="cuda")
    counts = torch.full((t,), -7, dtype=torch.int64, device="cuda")
    n_kept = torch.full((1,), -7, dtype=torch.int64, device="cuda")
    cuda_reduce.reduce(
        x,
        keep,
        idx,
        counts,
        n_kept,
        threshold=threshold,
        min_tokens=min_tokens,
        mode=mode,
        algo=algo,
        stream=torch.cuda.current_stream().cuda_stream,
    )
    torch.cuda.synchronize()
    n = int(n_kept.item())
    return keep.cpu().numpy(), idx[:n].cpu().numpy(), counts.cpu().numpy(), n


def _check_against_oracle(px: np.ndarray, keep, idx, counts, n, threshold, min_tokens, mode) -> None:
    t, g = px.shape[:2]
    want = reduction.keep_mask(px.reshape(t, g, -1), threshold, min_tokens, mode)
    assert set(np.unique(keep)) <= {0, 1}, "unwritten or non-boolean mask entries"
    np.testing.assert_array_equal(keep.astype(bool), want)
    want_idx, want_counts = reduction.compaction(want)
    assert n == len(want_idx)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(counts, want_counts)


@pytest.mark.parametrize("mode", reduction.MODES)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", EDGE, ids=[c[0] for c in EDGE])
def test_edge_cases_equal_oracle(case, algo: str, mode: str) -> None:
    name, px, threshold, min_tokens = case
    keep, idx, counts, n = _run(px, threshold, min_tokens, mode, algo)
    _check_against_oracle(px, keep, idx, counts, n, threshold, min_tokens, mode)
    if name == "identical_frames":
        assert keep[1:].sum(axis=1).tolist() == [1] * (px.shape[0] - 1) and keep[1:, 0].all()
    if name == "at_threshold":
        assert keep[1].sum() == 0 and keep[2].tolist() == [0, 0, 1, 1]
    if name == "bf16_ties":
        assert keep[1].all()


def test_compact_of_given_mask() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((13, 37)) < 0.3
    keep = torch.as_tensor(mask).cuda()
    idx = torch.full((13 * 37,), -1, dtype=torch.int64, device="cuda")
    counts = torch.empty(13, dtype=torch.int64, device="cuda")
    n_kept = torch.empty(1, dtype=torch.int64, device="cuda")
    cuda_reduce.compact(keep, idx, counts, n_kept)
    torch.cuda.synchronize()
    want_idx, want_counts = reduction.compaction(mask)
    assert int(n_kept.item()) == len(want_idx)
    np.testing.assert_array_equal(idx[: len(want_idx)].cpu().numpy(), want_idx)
    np.testing.assert_array_equal(counts.cpu().numpy(), want_counts)
    assert (idx[len(want_idx) :] == -1).all(), "entries past n_kept must stay untouched"


@pytest.fixture(scope="module")
def large_volume():
    """160 frames x 1024 merged tokens x 2352 values (1.5 GB fp32), 8-bit-derived, a third near the threshold."""
    u8 = near_threshold_volume(160, 160, 1024, (4, 588))  # 385 MB on the host, then moved
    x = torch.as_tensor(NORM_LUT).cuda()[torch.from_numpy(u8).cuda().long()]
    del u8
    return x


@pytest.mark.parametrize("mode", reduction.MODES)
def test_large_volume_equals_oracle(large_volume, mode: str) -> None:
    x = large_volume
    px = x.cpu().numpy()
    want = reduction.keep_mask(px.reshape(px.shape[0], px.shape[1], -1), 0.1, 1, mode)
    kept = want[1:].mean()
    assert 0.2 < kept < 0.9, f"degenerate test volume: {kept:.2f} of tokens kept"
    head = px[:20].reshape(20, px.shape[1], -1)
    near = np.abs(reduction.frame_token_diffs(head, mode) - 0.1) < 2e-3
    assert near.sum() > 200, f"the volume must have tokens near the threshold; {near.sum()} within 2e-3"
    for algo in ALGOS:
        keep, idx, counts, n = _run(x, 0.1, 1, mode, algo)
        np.testing.assert_array_equal(keep.astype(bool), want, err_msg=f"algo={algo}")
        want_idx, want_counts = reduction.compaction(want)
        assert n == len(want_idx)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(counts, want_counts)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("hidden", [64, 3584, 33])
def test_gather_rows_bit_exact(large_volume, dtype: str, hidden: int) -> None:
    x = large_volume[:40, :256]
    keep = torch.empty((40, 256), dtype=torch.uint8, device="cuda")
    idx = torch.empty(40 * 256, dtype=torch.int64, device="cuda")
    counts = torch.empty(40, dtype=torch.int64, device="cuda")
    n_kept = torch.empty(1, dtype=torch.int64, device="cuda")
    cuda_reduce.reduce(x.contiguous(), keep, idx, counts, n_kept)
    tdt = getattr(torch, dtype)
    feats = torch.randn((40 * 256, hidden), device="cuda").to(tdt)
    assert feats.float().std() > 1e-2
    out = torch.full((40 * 256, hidden), float("nan"), device="cuda").to(tdt)
    view = (lambda a: a.view(torch.int16)) if dtype == "bfloat16" else (lambda a: a)
    cuda_reduce.gather_rows(view(feats), idx, n_kept, view(out))
    torch.cuda.synchronize()
    n = int(n_kept.item())
    assert 0 < n < 40 * 256
    want = feats[idx[:n]]
    bits = torch.int32 if dtype == "float32" else torch.int16
    assert torch.equal(out[:n].view(bits), want.view(bits))
    assert torch.isnan(out[n:].float()).all(), "rows past n_kept must stay untouched"


def test_binding_rejects_bad_arrays() -> None:
    from hulurt.errors import ContractError

    x = torch.zeros((3, 4, 4, 588), device="cuda")
    keep = torch.empty((3, 5), dtype=torch.uint8, device="cuda")
    with pytest.raises(ContractError, match="keep_mask"):
        cuda_reduce.keep_mask(x, keep)
    with pytest.raises(ContractError, match="pixel_patches.*float16|'<f2'"):
        cuda_reduce.keep_mask(x.half(), keep[:, :4])
    with pytest.raises(ContractError, match="C-contiguous"):
        cuda_reduce.keep_mask(x.transpose(0, 1), torch.empty((4, 3), dtype=torch.uint8, device="cuda"))
