"""The phases quantize, verify, init-checkpoint and the engine builds report (huluexport/progress.py), checked
against what those commands actually did: a phase's count is the matrices rewritten, the cases compared, the
bytes written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from huluexport import progress


@pytest.fixture(autouse=True)
def _fresh_records():
    progress.reset()
    yield
    progress.reset()


def _by_name() -> dict[str, progress.PhaseRecord]:
    return {r.name: r for r in progress.records()}


def test_quantize_phases_count_the_matrices_it_rewrote(bundle_factory, tmp_path: Path) -> None:
    from huluexport.export.quantize import QuantizeOptions, count_ops, quantize

    src = bundle_factory("qwen2", "fp32")
    progress.reset()  # the bundle's own build, when this test made it
    out = quantize(QuantizeOptions(src=src, out=tmp_path / "q", bits=4))
    recs = _by_name()
    q = recs["decoder.onnx: quantize to int4"]
    nbits = count_ops(onnx.load(str(out / "decoder.onnx"), load_external_data=False))["MatMulNBits"]
    assert q.ok and q.unit == "matrices" and q.done == q.total == nbits > 0
    save = recs["decoder.onnx: save"]
    assert save.unit == "B" and save.done == (out / "decoder.onnx.data").stat().st_size
    copied = recs["copy the other files"]
    others = [p for p in out.rglob("*") if p.is_file() and p.name not in ("decoder.onnx", "decoder.onnx.data",
                                                                          "manifest.json")]
    assert copied.done == copied.total == sum(p.stat().st_size for p in others)
    manifest = json.loads((out / "manifest.json").read_text())
    assert recs["manifest (hash the bundle)"].done == sum(f["bytes"] for f in manifest["files"].values())


def test_verify_phases_count_cases_and_prompts(bundle_factory, ckpt_qwen2: Path) -> None:
    from huluexport.validate import CASES, verify

    bundle = bundle_factory("qwen2", "fp32")
    progress.reset()
    report = verify(bundle, ckpt_qwen2, steps=2)
    assert report.ok
    recs = _by_name()
    for name, n in (("reference: vision", len(CASES)), ("bundle: vision rows", len(CASES)),
                    ("reference: prefill + decode", len(report.tokens_reference)),
                    ("bundle: embed + decoder rows", len(report.tokens_reference))):
        assert recs[name].done == recs[name].total == n, name
    assert "check the bundle (sha256)" in recs and "reference model (PyTorch, fp32)" in recs


def test_init_checkpoint_phase_counts_every_weight_byte(tmp_path: Path) -> None:
    from huluexport.checkpoint.fixtures import write_checkpoint

    out = write_checkpoint(tmp_path / "ck", "tiny", seed=0)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    (rec,) = [r for r in progress.records() if r.name.endswith("safetensors shards")]
    shards = sorted(out.glob("*.safetensors"))
    assert rec.name == f"write {len(shards)} safetensors shards"
    assert rec.unit == "B" and rec.done == rec.total == index["metadata"]["total_size"]


@pytest.mark.trt
def test_engine_builds_are_phases(bundle_factory, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: TensorRT engines NOT built")
    from huluexport.export.tensorrt import check_bundle

    bundle = shutil.copytree(bundle_factory("qwen2", "fp16"), tmp_path / "b")
    progress.reset()  # the bundle's own build, when this test made it
    results = check_bundle(bundle, engines_dir=tmp_path / "eng")
    names = [r.name for r in progress.records()]
    assert names == [f"{r.piece}: tensorrt_rtx engine" for r in results] and len(names) == 3
