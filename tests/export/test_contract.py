"""Contract helpers: feeds at named sizes, bind/assert_conforms checks, dim ranges (no export needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hulurt.contract import (
    DERIVED_DIMS,
    DYNAMIC_DIMS,
    DimRange,
    Dims,
    assert_conforms,
    bind,
    dim_ranges,
    pieces,
    random_feeds,
    shape_of,
)
from hulurt.errors import ContractError

DIMS = Dims(hidden=64, vocab=320, layers=2, kv_heads=2, head_dim=16, vision_head_dim=16)


def test_every_named_dim_is_declared_and_ranged() -> None:
    named = {d for p in pieces(DIMS).values() for t in (*p.inputs, *p.outputs) for d in t.shape if isinstance(d, str)}
    assert named <= set(DYNAMIC_DIMS)
    assert set(dim_ranges(max_context=512, max_frames=4, max_groups=64)) == set(DYNAMIC_DIMS)


def test_random_feeds_bind_and_derived_dims() -> None:
    vision = pieces(DIMS)["vision"]
    feeds = random_feeds(vision, {"n_frames": 2, "n_groups": 3, "merge_group": 4})
    assert feeds["rope_cos"].shape == (12, 16)  # n_patches derived = n_groups * merge_group
    sizes = bind(vision, feeds)
    assert sizes == {"n_frames": 2, "n_groups": 3, "merge_group": 4, "n_patches": 12}
    feeds["rope_sin"] = np.zeros((11, 16), np.float32)
    with pytest.raises(ContractError, match="n_patches"):
        bind(vision, feeds)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda f: f.pop("position_ids"), "missing \\['position_ids'\\]"),
        (lambda f: f.update(extra=np.zeros(1)), "unknown \\['extra'\\]"),
        (lambda f: f.update(position_ids=f["position_ids"].astype(np.int32)), "int32.*int64"),
        (lambda f: f.update(inputs_embeds=f["inputs_embeds"][0]), "rank 3"),
        (lambda f: f.update(inputs_embeds=np.zeros((1, 3, 65), np.float32)), "axis 2 is 65; expected 64"),
        (lambda f: f.update(position_ids=np.zeros((1, 4), np.int64)), "seq_len.*is 4, but seq_len is 3"),
    ],
)
def test_bind_rejects_bad_feeds(mutate, match: str) -> None:
    dec = pieces(DIMS)["decoder"]
    feeds = random_feeds(dec, {"seq_len": 3, "past_len": 0})
    mutate(feeds)
    with pytest.raises(ContractError, match=match):
        bind(dec, feeds, where="decoder.onnx")


def test_bind_enforces_ranges_and_outputs_follow_inputs() -> None:
    dec = pieces(DIMS)["decoder"]
    ranges = dim_ranges(max_context=8, max_frames=1, max_groups=4)
    feeds = random_feeds(dec, {"seq_len": 9, "past_len": 0})
    with pytest.raises(ContractError, match="seq_len = 9 is outside the bundle's range \\[1, 8\\]"):
        bind(dec, feeds, ranges)
    feeds = random_feeds(dec, {"seq_len": 3, "past_len": 2})
    sizes = bind(dec, feeds, ranges)
    outs = random_feeds(type(dec)("out", dec.outputs, ()), {"total_len": 5})
    assert assert_conforms(dec, outs, sizes)["total_len"] == 5
    bad = random_feeds(type(dec)("out", dec.outputs, ()), {"total_len": 4})
    with pytest.raises(ContractError, match="total_len = past_len \\+ seq_len = 5"):
        assert_conforms(dec, bad, sizes)


def test_dim_range_validates() -> None:
    with pytest.raises(ContractError):
        DimRange(2, 1, 3)
    assert shape_of(pieces(DIMS)["decoder"].outputs[1], {"past_len": 2, "seq_len": 1}) == (1, 2, 3, 16)
    assert set(DERIVED_DIMS) == {"n_patches", "total_len"}
