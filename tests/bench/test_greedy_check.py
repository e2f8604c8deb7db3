"""huluexport/bench/greedy_check.py on hand-made traces: identical runs, a near tie, and a real discrepancy."""

from __future__ import annotations

import numpy as np
import pytest

from huluexport.bench.greedy_check import greedy_check, top2_margin


def _rows(n: int, vocab: int = 50, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(vocab).astype(np.float32) for _ in range(n)]


def test_identical_traces() -> None:
    ref = _rows(6)
    rt = [r + np.float32(1e-3) * np.sign(np.random.default_rng(1).standard_normal(r.shape)).astype(np.float32)
          for r in ref]
    toks = [int(np.argmax(r)) for r in ref]
    assert toks == [int(np.argmax(r)) for r in rt]
    gc = greedy_check(toks, rt, toks, ref)
    assert gc["first_divergence"] is None and gc["steps"] == gc["same_prefix_steps"] == 6
    np.testing.assert_allclose(gc["max_abs_logit_diff"], 1e-3, rtol=1e-3)
    assert gc["reference_top2_margin"] == [top2_margin(r) for r in ref]
    assert "identical for all 6 steps" in gc["summary"]


def _diverge_at(step: int, gap: float, noise: float) -> dict:
    """Traces equal up to `step`, where the reference prefers token 3 over 7 by `gap`; the runtime's rows are
    the reference's plus uniform noise of at most `noise` everywhere, and at `step` tokens 3 and 7 move by
    `noise` in opposite directions (the ordinary difference of two implementations meeting a near tie)."""
    rng = np.random.default_rng(2)
    ref = _rows(8)
    for r in ref:
        r[3], r[7] = 10.0, 5.0  # a clear choice (3) until the divergence
    ref[step][3], ref[step][7] = 10.0, 10.0 - gap
    rt = [r + rng.uniform(-noise, noise, r.shape).astype(np.float32) for r in ref]
    for r, q in zip(rt, ref):
        r[3], r[7] = q[3], q[7]
    rt[step][3] -= noise * 0.9
    rt[step][7] += noise * 0.9
    return greedy_check([int(np.argmax(r)) for r in rt], rt, [int(np.argmax(r)) for r in ref], ref)


def test_divergence_within_the_numeric_difference_is_a_near_tie() -> None:
    gc = _diverge_at(4, gap=0.01, noise=0.02)
    d = gc["divergence"]
    assert gc["first_divergence"] == d["step"] == 4 and gc["same_prefix_steps"] == 5
    assert (d["reference_token"], d["runtime_token"]) == (3, 7)
    assert d["reference_gap"] == pytest.approx(0.01, abs=1e-6) and d["runtime_gap"] == pytest.approx(0.026, abs=1e-6)
    assert d["deciding_logits_moved"] == pytest.approx(0.018, abs=1e-6)
    assert 0.018 < d["rest_of_row_moved"] <= 0.02
    assert d["near_tie"] is True and d["runtime_token_rank_in_reference"] == 2
    assert d["median_reference_margin_before"] == pytest.approx(5.0)
    assert "near tie" in gc["summary"] and "NOT" not in gc["summary"]


def test_divergence_beyond_the_numeric_difference_is_flagged() -> None:
    """Only the two deciding logits differ, by far more than the rest of the row: flagged, not a near tie."""
    ref = _rows(5)
    for r in ref:
        r[3], r[7] = 10.0, 5.0
    rt = [r + np.float32(1e-3) for r in ref]
    rt[2][7] = 12.0  # token 7 jumps by 7, token 3 drops by 6
    rt[2][3] = 4.0
    gc = greedy_check([int(np.argmax(r)) for r in rt], rt, [int(np.argmax(r)) for r in ref], ref)
    d = gc["divergence"]
    assert d["step"] == 2 and d["runtime_gap"] == pytest.approx(8.0) and d["reference_gap"] == pytest.approx(5.0)
    assert d["deciding_logits_moved"] == pytest.approx(7.0) and d["rest_of_row_moved"] == pytest.approx(1e-3, rel=1e-3)
    assert d["near_tie"] is False and "NOT a near tie" in gc["summary"]


def test_rows_after_the_divergence_are_not_compared() -> None:
    gc = _diverge_at(1, gap=0.01, noise=0.02)
    assert len(gc["max_abs_logit_diff"]) == 2 == gc["same_prefix_steps"]  # steps 0 and 1 share a prefix


def test_empty_or_mismatched_traces_are_refused() -> None:
    with pytest.raises(ValueError, match="no token"):
        greedy_check([], [], [1], _rows(1))
    with pytest.raises(ValueError, match="step 0"):
        greedy_check([1], [np.zeros(4, np.float32)], [1], [np.zeros(5, np.float32)])
