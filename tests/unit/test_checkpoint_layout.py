"""The torch-free checkpoint table (checkpoint.parameter_shapes) equals the reference module tree, per preset."""

from __future__ import annotations

import dataclasses

import pytest

from huluexport.checkpoint import parameter_shapes
from huluexport.checkpoint.random_weights import random_state, random_tensor
from huluexport.config import SIZES, ProjectorConfig, slice_layers
from huluexport.errors import ConfigError
from huluexport.reference.weights import expected_shapes


@pytest.mark.parametrize("size", list(SIZES))
def test_parameter_shapes_equal_the_reference_modules(size: str) -> None:
    cfg = SIZES[size]
    got, want = parameter_shapes(cfg), expected_shapes(cfg)
    assert list(got) == list(want)  # same names, same order
    assert got == want


def test_parameter_shapes_follow_the_projector_depth() -> None:
    cfg = SIZES["tiny"].replace(projector=ProjectorConfig(depth=3))
    assert parameter_shapes(cfg) == expected_shapes(cfg)


def test_random_state_is_per_name_and_deterministic() -> None:
    cfg = SIZES["tiny"]
    a, b = random_state(cfg, seed=3), random_state(cfg, seed=3)
    assert all(a[k].equal(b[k]) for k in a)
    # one tensor alone equals the same tensor inside the full state: what a streamed 7B build relies on
    name = "decoder.layers.1.mlp.down_proj.weight"
    assert random_tensor(name, tuple(a[name].shape), 3).equal(a[name])
    assert not random_state(cfg, seed=4)[name].equal(a[name])
    assert "decoder.lm_head.weight" not in random_state(cfg, seed=3, lm_head=False)


def test_slice_layers_one_rule() -> None:
    cfg = SIZES["7b"]  # 28 decoder layers, 27 vision layers
    assert slice_layers(cfg, None) is cfg
    s = slice_layers(cfg, 2)
    assert (s.decoder.layers, s.vision.layers) == (2, 2)
    s = slice_layers(cfg, 28)
    assert (s.decoder.layers, s.vision.layers) == (28, 27)
    assert dataclasses.replace(s.decoder, layers=cfg.decoder.layers) == cfg.decoder
    for bad in (0, -1, 29):
        with pytest.raises(ConfigError, match=f"--layers {bad}: expected 1..28"):
            slice_layers(cfg, bad)
