"""hulurt.rope: the vision 2-D RoPE host table (docs/model.md §4.2, §11)."""

from __future__ import annotations

import numpy as np
import pytest
from hulurt.rope import inv_freq, rope_angles, token_coords, vision_rope


def test_token_coords_merge_grouped_order_4x6_m2() -> None:
    c = token_coords(4, 6, 2)
    # first 2x2 block (top-left, top-right, bottom-left, bottom-right), then the next block to the right
    assert c[:8].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    # block row 1 starts at token 3 blocks * 4 = 12 with patch (2, 0)
    assert c[12].tolist() == [2, 0] and c[23].tolist() == [3, 5]
    assert sorted(map(tuple, c.tolist())) == [(y, x) for y in range(4) for x in range(6)]


def test_token_coords_m1_is_raster() -> None:
    c = token_coords(3, 5, 1)
    assert c.tolist() == [[y, x] for y in range(3) for x in range(5)]


def test_rope_angles_4x6_m2_at_expected_tokens() -> None:
    dv = 16  # tiny vision head_dim: r = 8, 4 frequencies per axis
    w = inv_freq(dv)
    assert w.dtype == np.float32 and w.shape == (4,)
    np.testing.assert_allclose(w, 10000.0 ** (-np.arange(0, 8, 2) / 8), rtol=1e-6)
    ang = rope_angles(4, 6, 2, dv)
    assert ang.shape == (24, dv) and ang.dtype == np.float32
    for token, (y, x) in {0: (0, 0), 3: (1, 1), 5: (0, 3), 14: (3, 0), 23: (3, 5)}.items():
        expect = np.concatenate([y * w, x * w])
        np.testing.assert_array_equal(ang[token, :8], expect.astype(np.float32))
        np.testing.assert_array_equal(ang[token, 8:], ang[token, :8])  # pairs (j, j + r) share an angle


def test_vision_rope_cos_sin_table() -> None:
    cos, sin = vision_rope(4, 6, 2, 72)
    assert cos.shape == sin.shape == (24, 72) and cos.dtype == sin.dtype == np.float32
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-6)
    assert not cos.flags.writeable  # cached tables are shared: callers must not modify them
    assert float(np.std(sin)) > 1e-2


@pytest.mark.parametrize(("gh", "gw", "m"), [(3, 4, 2), (0, 4, 1), (4, 4, 3)])
def test_bad_grids_rejected(gh: int, gw: int, m: int) -> None:
    with pytest.raises(ValueError, match="grid|merge"):
        vision_rope(gh, gw, m, 16)
