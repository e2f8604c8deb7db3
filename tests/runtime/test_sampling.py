"""Sampling unit tier (numpy only): greedy, temperature, top-k, top-p, repetition penalty, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hulurt.sampling import (
    Sampler,
    SamplingConfig,
    SamplingError,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    softmax,
)


def test_greedy_is_argmax_first_of_ties() -> None:
    logits = np.array([0.1, 3.0, -2.0, 3.0], dtype=np.float32)
    assert Sampler(SamplingConfig())(logits, np.array([], dtype=np.int64)) == 1
    assert Sampler(SamplingConfig())(logits.reshape(1, -1), np.array([], dtype=np.int64)) == 1


def test_repetition_penalty_follows_transformers_rule() -> None:
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_repetition_penalty(logits, np.array([0, 1, 1], dtype=np.int64), 2.0)
    np.testing.assert_array_equal(out, np.array([1.0, -4.0, 1.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(logits, [2.0, -2.0, 1.0, 0.5])  # input untouched
    # greedy with a penalty moves away from the repeated token
    s = Sampler(SamplingConfig(greedy=True, repetition_penalty=4.0))
    assert s(np.array([2.0, 1.0], dtype=np.float32), np.array([0], dtype=np.int64)) == 1


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = np.array([0.0, 5.0, 1.0, 4.0, -1.0], dtype=np.float32)
    out = filter_top_k(logits, 2)
    assert np.isfinite(out).sum() == 2
    assert set(np.flatnonzero(np.isfinite(out))) == {1, 3}
    assert filter_top_k(logits, 0) is logits


def test_top_p_keeps_smallest_nucleus() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).astype(np.float32)
    kept = np.isfinite(filter_top_p(logits, 0.75))
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.75 <= 0.8
    kept = np.isfinite(filter_top_p(logits, 0.8))
    assert kept.tolist() == [True, True, False, False]  # mass before the third is 0.8 >= 0.8
    kept = np.isfinite(filter_top_p(logits, 0.01))
    assert kept.tolist() == [True, False, False, False]  # the most likely always stays


def test_seeded_sampling_repeats_and_seeds_differ() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32)
    seen = np.array([], dtype=np.int64)
    cfg = SamplingConfig(greedy=False, temperature=1.5, seed=123)
    a = [Sampler(cfg)(logits, seen) for _ in range(1)]
    s1, s2, s3 = Sampler(cfg), Sampler(cfg), Sampler(SamplingConfig(greedy=False, temperature=1.5, seed=7))
    r1 = [s1(logits, seen) for _ in range(40)]
    r2 = [s2(logits, seen) for _ in range(40)]
    r3 = [s3(logits, seen) for _ in range(40)]
    assert r1 == r2 and r1[0] == a[0]
    assert r1 != r3
    assert len(set(r1)) > 5  # actually sampling, not greedy


def test_sampling_matches_the_distribution() -> None:
    probs = np.array([0.6, 0.3, 0.1])
    logits = np.log(probs).astype(np.float32)
    s = Sampler(SamplingConfig(greedy=False, seed=0))
    draws = np.array([s(logits, np.array([], dtype=np.int64)) for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_top_k_1_and_low_temperature_are_greedy() -> None:
    rng = np.random.default_rng(1)
    seen = np.array([], dtype=np.int64)
    for _ in range(20):
        logits = rng.standard_normal(30).astype(np.float32)
        assert Sampler(SamplingConfig(greedy=False, top_k=1, seed=3))(logits, seen) == int(np.argmax(logits))
        assert Sampler(SamplingConfig(greedy=False, temperature=1e-4, seed=3))(logits, seen) == int(np.argmax(logits))


def test_softmax_is_stable() -> None:
    p = softmax(np.array([1000.0, 1000.0, -np.inf]))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0])


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, word: str) -> None:
    with pytest.raises(SamplingError, match=word):
        SamplingConfig(greedy=False, **kwargs)


def test_all_nan_logits_raise() -> None:
    from hulurt.errors import HuluRuntimeError

    with pytest.raises(HuluRuntimeError, match="finite"):
        Sampler(SamplingConfig())(np.full(4, np.nan, dtype=np.float32), np.array([], dtype=np.int64))


def test_smallest_temperature_is_greedy_without_nan() -> None:
    """Logits / 1e-5 overflow float32 (the NaN probabilities of --temperature 1e-45); the sampler works in
    float64 after shifting the best logit to 0, so the smallest allowed temperature picks the argmax."""
    logits = np.array([3.0e38, -3.0e38, 2.9e38, 0.0, 1.0], dtype=np.float32)
    s = Sampler(SamplingConfig(greedy=False, temperature=1e-5, top_k=3, top_p=0.9, seed=0))
    assert [s(logits, np.array([], dtype=np.int64)) for _ in range(20)] == [0] * 20


def _reference_draws(cfg: SamplingConfig, rows: list[np.ndarray], seen: np.ndarray) -> list[int]:
    """The plain statement of the rule: full-vocabulary filters, softmax and numpy's weighted choice."""
    rng = np.random.default_rng(cfg.seed)
    out = []
    for row in rows:
        row = apply_repetition_penalty(row, seen, cfg.repetition_penalty)
        scaled = (row.astype(np.float64) - np.max(row)) / cfg.temperature
        probs = softmax(filter_top_p(filter_top_k(scaled, cfg.top_k), cfg.top_p))
        out.append(int(rng.choice(probs.shape[0], p=probs)))
    return out


@pytest.mark.parametrize("vocab", [7, 300, 20_000])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.0},
        {"temperature": 0.5, "top_k": 50, "top_p": 0.95},
        {"temperature": 1.3, "top_k": 3},
        {"temperature": 2.0, "top_p": 0.5, "repetition_penalty": 1.2},
        {"temperature": 1.0, "top_p": 0.999},  # a nucleus larger than the first candidate set (256)
    ],
)
def test_candidate_sampler_draws_what_the_full_sort_rule_draws(vocab: int, kwargs: dict) -> None:
    """The Sampler never sorts the vocabulary (hulurt.sampling.nucleus); with the same seed it must draw the
    very tokens the full-sort filters + rng.choice draw. Rows with ties (rounded logits) check the tie rule."""
    rng = np.random.default_rng(vocab)
    rows = [(rng.standard_normal(vocab) * 3).astype(np.float32) for _ in range(60)]
    rows += [np.round(r) for r in rows[:30]]  # many equal logits at every border
    seen = rng.integers(0, vocab, 25)
    cfg = SamplingConfig(greedy=False, seed=5, **kwargs)
    s = Sampler(cfg)
    got = [s(r, seen) for r in rows]
    assert got == _reference_draws(cfg, rows, seen)
    assert len(set(got)) > 1  # not a greedy pick


@pytest.mark.parametrize("k, p", [(0, 0.9), (0, 0.3), (40, 0.8), (5, 1.0), (0, 0.9999)])
def test_candidates_are_the_full_sort_filters_kept_set(k: int, p: float) -> None:
    """candidates(): the kept ids are those the full-sort filters leave finite, the weights are their
    unnormalised softmax; at vocabulary size, flat logits and ties."""
    from hulurt.sampling import candidates

    rng = np.random.default_rng(3)
    for row in ((rng.standard_normal(152_064) * 3).astype(np.float32),
                np.round(rng.standard_normal(152_064) * 2).astype(np.float32)):
        ids, weight = candidates(row, 0.8, k, p)
        scaled = (row.astype(np.float64) - row.max()) / 0.8
        ref = filter_top_p(filter_top_k(scaled, k), p)
        kept = np.flatnonzero(np.isfinite(ref))
        np.testing.assert_array_equal(ids, kept)
        np.testing.assert_allclose(weight / weight.sum(), softmax(ref)[kept], rtol=1e-12)
        if k or p < 1.0:
            assert 0 < ids.shape[0] < row.shape[0]  # the filters did filter


def test_nan_or_inf_logits_are_refused_not_sampled() -> None:
    from hulurt.errors import HuluRuntimeError

    row = np.zeros(10, dtype=np.float32)
    for bad in (np.nan, np.inf):
        row[3] = bad
        for cfg in (SamplingConfig(), SamplingConfig(greedy=False, top_p=0.5)):
            with pytest.raises(HuluRuntimeError, match="1 of 10 logits"):
                Sampler(cfg)(row, np.array([], dtype=np.int64))
    row[3] = -np.inf  # a zero probability is fine
    s = Sampler(SamplingConfig(greedy=False, seed=0))
    assert 3 not in {s(row, np.array([], dtype=np.int64)) for _ in range(200)}
