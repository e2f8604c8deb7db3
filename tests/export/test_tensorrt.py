"""TensorRT compatibility: every fp32/fp16 graph of the tiny bundles parses and builds (tensorrt-rtx, CPU)."""

from __future__ import annotations

import pytest
from hulurt.manifest import load_manifest

from huluexport.export.tensorrt import check_bundle, profile_shapes

pytestmark = pytest.mark.trt


# fp16 bundles: tests/export/test_engines.py builds and keeps their engines with the same code (hulurt.engines)
@pytest.mark.parametrize("flavor, precision", [("qwen2", "fp32"), ("qwen3", "fp32")])
def test_trt_parse_and_build(bundle_factory, flavor: str, precision: str) -> None:
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: TensorRT check NOT run")
    results = check_bundle(bundle_factory(flavor, precision))
    assert [r.piece for r in results] == ["vision", "embed", "decoder"]
    assert all(r.engine_bytes > 0 for r in results)


def test_profiles_follow_dim_ranges(bundle_factory) -> None:
    m = load_manifest(bundle_factory("qwen2", "fp32"), verify_hashes=False)
    specs = m.specs()
    vis = profile_shapes(specs["vision"], m.dim_ranges)
    lo, _opt, hi = vis["pixel_patches"]
    assert lo == (1, 1, 1, 588) and hi == (16, 256, 4, 588)
    assert vis["rope_cos"][2] == (hi[1] * hi[2], 16)  # n_patches = n_groups * merge_group at every point
    dec = profile_shapes(specs["decoder"], m.dim_ranges)
    assert dec["past_key_values.0.key"][0] == (1, 2, 0, 16)  # empty cache (prefill) is inside the profile
