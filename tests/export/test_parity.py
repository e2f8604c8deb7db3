"""Exported bundles vs the PyTorch reference on onnxruntime CPU: every dynamic dim at >= 2 sizes, image (m=1,
non-square), video and volume (m=2, several frame counts), text only, 16 greedy steps; fp32 and fp16."""

from __future__ import annotations

import pytest
from hulurt.contract import DYNAMIC_DIMS

from huluexport.tolerances import get
from huluexport.validate import verify


@pytest.mark.parametrize("flavor, precision", [("qwen2", "fp32"), ("qwen3", "fp32"), ("qwen2", "fp16")])
def test_bundle_matches_reference(bundle_factory, ckpt_qwen2, ckpt_qwen3, flavor: str, precision: str) -> None:
    ckpt = {"qwen2": ckpt_qwen2, "qwen3": ckpt_qwen3}[flavor]
    report = verify(bundle_factory(flavor, precision), ckpt, steps=16)
    print(report.table())
    assert report.ok, report.table()

    # the run exercised every dynamic dim of the v1 pieces at two or more sizes (prefill/decode, empty/non-empty
    # past, m=1/m=2...); kv_capacity belongs to decoder_gqa only (tests/export/test_gqa_parity.py)
    for dim in (d for d in DYNAMIC_DIMS if d != "kv_capacity"):
        assert len(report.dims_seen.get(dim, ())) >= 2, (dim, report.dims_seen)
    assert 0 in report.dims_seen["past_len"] and 0 in report.dims_seen["n_visual"]
    assert {1, 4} <= set(report.dims_seen["merge_group"]) and {1, 2, 3} <= set(report.dims_seen["n_frames"])

    # non-degenerate reference outputs: near-constant ones would make parity trivial
    for row in report.rows:
        assert row.ref_std > 1e-2, row

    vision = [r for r in report.rows if r.piece == "vision"]
    logits = [r for r in report.rows if r.output == "logits"]
    assert len(vision) == 4 and len(logits) == 4
    if precision == "fp32":  # acceptance: max abs <= 1e-4, greedy tokens identical for 16 steps
        assert get("vision", "fp32", "ort").max_abs <= 1e-4 and get("decoder", "fp32", "ort").max_abs <= 1e-4
        assert all(r.max_abs <= 1e-4 for r in vision + logits)
        for name, ref in report.tokens_reference.items():
            assert len(ref) == 17 and report.tokens_bundle[name] == ref, name
    else:  # acceptance: cosine >= 0.999 on vision features, top-1 >= 99% on logits over those steps
        assert all(r.cosine >= 0.999 for r in vision)
        assert all(r.top1 is not None and r.top1 >= 0.99 for r in logits)
