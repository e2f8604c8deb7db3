"""KV cache bookkeeping: allocation once, in-place row writes, strategy equivalence, overflow and contract errors."""

from __future__ import annotations

import numpy as np
import pytest
from hulurt.errors import ContextLengthError, ContractError
from hulurt.kv_cache import KVCache, KVShape

SHAPE = KVShape(layers=2, kv_heads=2, head_dim=3)


def presents(rng, total: int, prev: dict | None) -> dict[str, np.ndarray]:
    out = {}
    for layer in range(SHAPE.layers):
        for kv in ("key", "value"):
            name = f"present.{layer}.{kv}"
            new = rng.standard_normal((1, SHAPE.kv_heads, total - (prev[name].shape[2] if prev else 0), 3))
            base = prev[name] if prev else np.zeros((1, 2, 0, 3))
            out[name] = np.concatenate([base, new.astype(np.float32)], axis=2).astype(np.float32)
    return out


def test_buffer_and_chain_hold_the_same_rows() -> None:
    rng = np.random.default_rng(0)
    buf, chain = KVCache(SHAPE, 10, "buffer"), KVCache(SHAPE, 10, "chain")
    ids_before = [id(b) for b in buf._buffers]
    prev = None
    for total, step in ((4, 4), (5, 1), (6, 1)):
        prev = presents(rng, total, prev)
        buf.update(prev, step)
        chain.update(prev, step)
        fb, fc = buf.feeds(), chain.feeds()
        names = sorted(f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value"))
        assert sorted(fb) == sorted(fc) == names
        for k in fb:
            np.testing.assert_array_equal(fb[k], fc[k])
            assert fb[k].shape == (1, 2, total, 3)
    assert [id(b) for b in buf._buffers] == ids_before  # never reallocated
    assert buf.nbytes_max == 10 * SHAPE.bytes_per_token() == 10 * 2 * 2 * 2 * 3 * 4


def test_empty_past_for_prefill() -> None:
    for strategy in ("buffer", "chain"):
        feeds = KVCache(SHAPE, 4, strategy).feeds()
        assert all(v.shape == (1, 2, 0, 3) and v.dtype == np.float32 for v in feeds.values())


def test_overflow_is_a_context_error_with_numbers() -> None:
    c = KVCache(SHAPE, 5, "buffer")
    c.update(presents(np.random.default_rng(1), 4, None), 4)
    with pytest.raises(ContextLengthError, match="holds 4 tokens and 2 more .* maximum is 5"):
        c.check_room(2)


def test_present_of_the_wrong_length_is_a_contract_error() -> None:
    c = KVCache(SHAPE, 8, "chain")
    with pytest.raises(ContractError, match="total_len 3; expected past_len 0 \\+ seq_len 4 = 4"):
        c.update(presents(np.random.default_rng(2), 3, None), 4)
    with pytest.raises(ContractError, match="present.0.key.* missing"):
        c.update({}, 1)


def test_bad_strategy_and_length() -> None:
    with pytest.raises(ValueError, match="strategy"):
        KVCache(SHAPE, 4, "paged")
    with pytest.raises(ContextLengthError):
        KVCache(SHAPE, 0)
