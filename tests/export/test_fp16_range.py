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
from e2e.bundles import overflow_bundle, overflow_checkpoint
from safetensors.torch import load_file, save_file

from huluexport.export.pipeline import BuildOptions, build
from huluexport.reference.ranges import FP16_MAX, HEADROOM_WARN
from huluexport.validate import verify


@pytest.fixture(scope="module")
def hot_checkpoint() -> Path:
    """The tiny Qwen2 checkpoint with layer 0's down_proj scaled by 1e5: its residual stream passes 65504."""
    return overflow_checkpoint()


def test_verify_reports_the_headroom(bundle_factory, ckpt_qwen2: Path) -> None:
    report = verify(bundle_factory("qwen2", "fp16"), ckpt_qwen2, steps=2, verify_hashes=False)
    assert report.ok, report.table()
    assert set(report.ranges) == {"vision", "decoder"}
    for piece, p in report.ranges.items():
        assert 0 < p.value < FP16_MAX / HEADROOM_WARN and p.where.startswith(
            "decoder." if piece == "decoder" else ("vision_encoder.", "mm_projector."))
        assert f"fp16 range {piece}: largest |activation| {p.value:.4g} at {p.where}" in report.table()
    assert not report.overflows


def test_fp16_bundle_of_a_hot_checkpoint_fails_naming_the_place(hot_checkpoint: Path, capsys) -> None:
    fp16 = overflow_bundle("fp16")
    report = verify(fp16, hot_checkpoint, steps=2, verify_hashes=False)
    assert not report.ok
    peaks = {p.piece: p for p in report.overflows}
    assert set(peaks) == {"decoder", "decoder_gqa"}
    peak = peaks["decoder"]
    assert peak.where.startswith("decoder.layers.0") and peak.value > FP16_MAX
    assert "PAST the fp16 maximum 65504 (this bundle's fp16 graphs hold it in fp16" in report.table()
    # the hazard is real: the fp16 graphs' logits are not finite, in both forms
    for piece in peaks:
        assert any("non-finite values" in r.failed for r in report.rows if r.piece == piece)
    code, _, err = _run(capsys, "verify", str(fp16), "--checkpoint", str(hot_checkpoint), "--steps", "2", "--no-hash")
    assert code == 1 and f"decoder activations past fp16 at {peak.where}" in err and "Traceback" not in err


@pytest.mark.parametrize("form", ["gqa-static", "v1-concat"])
def test_runtime_refuses_overflowed_logits(form: str) -> None:
    """The runtime on that fp16 bundle: the prompt's logits are NaN. Greedy on the gqa-static form takes only
    the graph's argmax token from the device, which would turn them into tokens; the row is checked once after
    the prompt, so the request fails with the cause instead. v1 (the host sampler) checks every row."""
    import hulurt
    from hulurt.errors import NumericError

    model = hulurt.load(overflow_bundle("fp16"), provider="cpu", threads=1, decoder_form=form)
    assert model.decoder_piece == ("decoder_gqa" if form == "gqa-static" else "decoder")
    with pytest.raises(NumericError, match=r"logits that are not finite.*huluexport verify BUNDLE"):
        model.generate("Describe the heart.", max_new_tokens=4, stop_ids=())


def test_fp32_bundle_of_a_hot_checkpoint_passes_and_warns_for_fp16(hot_checkpoint: Path) -> None:
    report = verify(overflow_bundle("fp32"), hot_checkpoint, steps=2, verify_hashes=False)
    assert report.ok, report.table()
    assert report.ranges["decoder"].overflows_fp16 and not report.overflows
    assert "(an fp16 build of this checkpoint would overflow there)" in report.table()


def test_attention_scores_count_for_the_forms_that_store_them(ckpt_qwen2: Path, tmp_path: Path) -> None:
    """Layer 1's q and k scaled by 400: q.k^T passes 65504 while no matmul output does. The v1 fp16 graph holds
    q.k^T in fp16 (its MatMul is fp16 -> fp16), so verify fails its decoder there; the gqa-static form keeps the
    scores inside GroupQueryAttention, so its peak is elsewhere. (onnxruntime's CPU provider widens that MatMul
    to fp32, so the rows pass here; a GPU provider would not.)"""
    dst = shutil.copytree(ckpt_qwen2, tmp_path / "ckpt")
    where = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    for name in (f"model.layers.1.self_attn.{w}_proj.{t}" for w in "qk" for t in ("weight", "bias")):
        tensors = load_file(dst / where[name])
        tensors[name] = tensors[name] * 400
        save_file(tensors, dst / where[name], metadata={"format": "pt"})
    b = build(BuildOptions(out=tmp_path / "b", checkpoint=dst, precision="fp16", target="tiny",
                           decoder_forms=("v1-concat", "gqa-static")))
    report = verify(b, dst, steps=2, verify_hashes=False)
    assert all(r.ok for r in report.rows) and not report.ok
    assert "rows within tolerance; decoder past the fp16 range (" in report.table()
    (peak,) = report.overflows
    assert (peak.piece, peak.where) == ("decoder", "decoder.layers.1.self_attn q.k scores")
    gqa = report.ranges["decoder_gqa"]
    assert not gqa.overflows_fp16 and not gqa.where.endswith("q.k scores")
    assert report.ranges["vision"].where.startswith("vision_encoder.")


def test_recorder_leaves_the_model_as_it_was() -> None:
    """Hooks and score observers are gone after the recorder: the exporter traces these same modules."""
    import torch

    from huluexport.config import preset
    from huluexport.reference.model import HuluMed
    from huluexport.reference.ranges import RangeRecorder

    cfg = preset("tiny")
    model = HuluMed(cfg).eval()
    with RangeRecorder(model) as rec, torch.no_grad():
        attn = [m for m in model.modules() if hasattr(m, "observe_qk")]
        assert len(attn) == cfg.decoder.layers + cfg.vision.layers and all(m.observe_qk for m in attn)
        model.decoder(torch.randn(1, 5, cfg.decoder.hidden), torch.arange(5)[None])
    assert {w for w in rec.seen if w.endswith("q.k scores")} == {
        f"decoder.layers.{i}.self_attn q.k scores" for i in range(cfg.decoder.layers)}
    assert all(m.observe_qk is None and "observe_qk" not in vars(m) for m in attn)
    assert not any(m._forward_hooks for m in model.modules())
