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
