"""The fp16 headroom check of `huluexport verify` (huluexport/reference/ranges.py): the fp32 reference's largest
|activation| where an fp16 graph stores one, per piece. A checkpoint that passes 65504 there fails verify for an
fp16 bundle (whose graphs really do overflow: its logits are not finite), naming the place; an fp32 bundle of the
same checkpoint passes, and verify says an fp16 build would overflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_main import run_main as _run
from safetensors.torch import load_file, save_file

from huluexport.export.pipeline import BuildOptions, build
from huluexport.reference.ranges import FP16_MAX, HEADROOM_WARN
from huluexport.validate import verify

SCALED = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def hot_checkpoint(ckpt_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 checkpoint with layer 0's down_proj scaled by 1e5: its residual stream passes 65504."""
    dst = shutil.copytree(ckpt_qwen2, tmp_path_factory.mktemp("hot") / "ckpt")
    shard = dst / json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"][SCALED]
    tensors = load_file(shard)
    tensors[SCALED] = tensors[SCALED] * 1e5
    save_file(tensors, shard, metadata={"format": "pt"})
    return dst


def test_verify_reports_the_headroom(bundle_factory, ckpt_qwen2: Path) -> None:
    report = verify(bundle_factory("qwen2", "fp16"), ckpt_qwen2, steps=2, verify_hashes=False)
    assert report.ok, report.table()
    assert set(report.ranges) == {"vision", "decoder"}
    for piece, p in report.ranges.items():
        assert 0 < p.value < FP16_MAX / HEADROOM_WARN and p.where.startswith(
            "decoder." if piece == "decoder" else ("vision_encoder.", "mm_projector."))
        assert f"fp16 range {piece}: largest |activation| {p.value:.4g} at {p.where}" in report.table()
    assert not report.overflows


def test_fp16_bundle_of_a_hot_checkpoint_fails_naming_the_place(hot_checkpoint: Path, tmp_path: Path,
                                                                capsys) -> None:
    fp16 = build(BuildOptions(out=tmp_path / "fp16", checkpoint=hot_checkpoint, precision="fp16", target="tiny"))
    report = verify(fp16, hot_checkpoint, steps=2, verify_hashes=False)
    assert not report.ok
    (peak,) = report.overflows
    assert peak.piece == "decoder" and peak.where.startswith("decoder.layers.0") and peak.value > FP16_MAX
    assert "PAST the fp16 maximum 65504 (this bundle's fp16 graphs overflow there" in report.table()
    # the hazard is real: the fp16 graphs' logits are not finite
    assert any("non-finite values" in r.failed for r in report.rows if r.piece == "decoder")
    code, _, err = _run(capsys, "verify", str(fp16), "--checkpoint", str(hot_checkpoint), "--steps", "2", "--no-hash")
    assert code == 1 and f"decoder activations past fp16 at {peak.where}" in err and "Traceback" not in err


def test_fp32_bundle_of_a_hot_checkpoint_passes_and_warns_for_fp16(hot_checkpoint: Path, tmp_path: Path) -> None:
    fp32 = build(BuildOptions(out=tmp_path / "fp32", checkpoint=hot_checkpoint, precision="fp32", target="tiny"))
    report = verify(fp32, hot_checkpoint, steps=2, verify_hashes=False)
    assert report.ok, report.table()
    assert report.ranges["decoder"].overflows_fp16 and not report.overflows
    assert "(an fp16 build of this checkpoint would overflow there)" in report.table()
