"""`huluexport quantize` on a bundle with both decoder forms. By default the gqa-static form (decoder_gqa, the one
hulurt runs on a GPU) is quantized along with v1: its packed q/k/v and every other matrix become MatMulNBits.
With the same quantized weights the two forms compute the same function, `verify` checks each against the
reference with its own entry, and `--piece` / `--format qdq` pick and refuse pieces by name."""

from __future__ import annotations

from pathlib import Path

import hulurt
import numpy as np
import onnx
import pytest
from cli_main import run_main as _run
from hulurt.manifest import load_manifest

from huluexport.export.quantize import count_ops, quantize_bundle
from huluexport.tolerances import get as tolerance
from huluexport.validate import BundleRunner, _gqa_decoder, _gqa_pass, verify

_Q: dict[tuple[str, int], Path] = {}
PROMPT = "Describe the heart."


@pytest.fixture(scope="module")
def quantized(gqa_bundle_factory, tmp_path_factory: pytest.TempPathFactory):
    """quantized(flavor, bits) -> the tiny fp32 bundle with both forms, quantized with the default pieces."""

    def get(flavor: str, bits: int) -> Path:
        if (flavor, bits) not in _Q:
            src = gqa_bundle_factory(flavor, "fp32", both=True)
            _Q[flavor, bits] = quantize_bundle(src, tmp_path_factory.mktemp("qg") / f"{flavor}-int{bits}", bits=bits)
        return _Q[flavor, bits]

    return get


def _graph(b: Path, piece: str) -> onnx.ModelProto:
    return onnx.load(str(b / f"{piece}.onnx"), load_external_data=False)


@pytest.mark.parametrize("bits", [8, 4])
def test_default_quantizes_every_decoder_form(quantized, bits: int) -> None:
    q = quantized("qwen2", bits)
    m = load_manifest(q, verify_hashes=True)
    assert {p: m.pieces[p].precision for p in m.pieces} == {
        "vision": "fp32", "embed": "fp32", "decoder": f"int{bits}", "decoder_gqa": f"int{bits}"}
    assert m.pieces["decoder_gqa"].compute["weights"] == m.pieces["decoder"].compute["weights"]
    g = _graph(q, "decoder_gqa")
    ops = count_ops(g)
    # Qwen2.5: per layer the packed q/k/v, o, gate, up, down; then the lm_head. Nothing left in fp.
    assert ops == {"MatMulNBits": 5 * m.dims.layers + 1, "MatMul(const weight)": 0, "Gemm(const weight)": 0}
    names = {t.name for t in g.graph.initializer}
    assert f"layers.0.self_attn.q_proj+k_proj+v_proj.weight.T_Q{bits}" in names
    assert {onnx.helper.get_attribute_value(a) for n in g.graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "bits"} == {bits}
    assert sum(n.op_type == "GroupQueryAttention" for n in g.graph.node) == m.dims.layers  # the form is kept


def _logits(b: Path) -> tuple[np.ndarray, np.ndarray]:
    """Prefill + 8 teacher-forced steps of the same tokens through v1 (BundleRunner) and gqa-static."""
    m = load_manifest(b, verify_hashes=False)
    runner = BundleRunner(m)
    none = np.zeros((0, m.dims.hidden), np.float32)
    emb = runner.embed(np.array([[1, 5, 9, 33, 70, 21, 8, 100, 4]], np.int64), none)
    steps = [7, 19, 3, 55, 2, 11, 90, 13]
    gqa, _ = _gqa_pass(_gqa_decoder(m, emb.shape[1] + len(steps)), emb, steps)
    cache = runner.gen.new_cache(emb.shape[1] + len(steps))
    v1 = [runner.gen.decode(emb, 0, cache)]
    for t in steps:
        v1.append(runner.gen.decode(runner.embed(np.array([t], np.int64), none), cache.length, cache))
    return np.concatenate(v1), gqa


@pytest.mark.parametrize("flavor", ["qwen2", "qwen3"])
def test_quantized_forms_compute_the_same_function(quantized, gqa_bundle_factory, flavor: str) -> None:
    q = quantized(flavor, 4)
    v1, gqa = _logits(q)
    tol = tolerance("decoder_gqa", "int4", "decoder-int4")
    assert np.abs(gqa - v1).max() <= tol.max_abs
    assert (gqa.argmax(-1) == v1.argmax(-1)).mean() >= tol.min_top1
    # not a trivial pass: the int4 logits are not the fp32 bundle's
    _, fp = _logits(gqa_bundle_factory(flavor, "fp32", both=True))
    assert np.abs(gqa - fp).max() > 100 * tol.max_abs
    tokens = {form: hulurt.load(q, provider="cpu", threads=1, decoder_form=form)
              .generate(PROMPT, max_new_tokens=16, stop_ids=()).token_ids for form in ("v1-concat", "gqa-static")}
    assert tokens["v1-concat"] == tokens["gqa-static"] and len(set(tokens["gqa-static"])) > 1


def test_verify_checks_both_quantized_forms(quantized, ckpt_qwen2: Path) -> None:
    report = verify(quantized("qwen2", 4), ckpt_qwen2, steps=8, verify_hashes=False)
    assert report.ok, report.table()
    for piece in ("decoder", "decoder_gqa"):
        rows = [r for r in report.rows if r.piece == piece]
        assert rows and all(r.tolerance is tolerance(piece, "int4", "ort") for r in rows)
        assert all(r.max_abs > 0 and r.ref_std > 1e-2 for r in rows)


def test_piece_option_and_the_qdq_form(gqa_bundle_factory, tmp_path: Path, capsys) -> None:
    both = gqa_bundle_factory("qwen2", "fp32", both=True)
    out = tmp_path / "gqa-only-int8"
    code, _, err = _run(capsys, "quantize", str(both), "--out", str(out), "--bits", "8", "--piece", "decoder_gqa")
    assert code == 0, err
    m = load_manifest(out, verify_hashes=True)
    assert (m.pieces["decoder"].precision, m.pieces["decoder_gqa"].precision) == ("fp32", "int8")
    assert count_ops(_graph(out, "decoder"))["MatMulNBits"] == 0

    # the QDQ form is TensorRT's, and TensorRT cannot build GroupQueryAttention
    bad = tmp_path / "qdq-gqa"
    code, _, err = _run(capsys, "quantize", str(both), "--out", str(bad), "--bits", "4", "--format", "qdq",
                        "--piece", "decoder_gqa")
    assert code == 2 and "--piece decoder_gqa with --format qdq" in err and "TensorRT" in err
    assert "Traceback" not in err and not bad.exists()
    only_gqa = gqa_bundle_factory("qwen2", "fp32")
    code, _, err = _run(capsys, "quantize", str(only_gqa), "--out", str(bad), "--bits", "4", "--format", "qdq")
    assert code == 2 and "no piece to quantize with --format qdq" in err and "'decoder_gqa'" in err
    assert not bad.exists()
    code, _, err = _run(capsys, "quantize", str(both), "--out", str(bad), "--bits", "4", "--piece", "vision")
    assert code == 2 and "--piece" in err and not bad.exists()


def test_bench_reads_the_quantized_gqa_weights(quantized, gqa_bundle_factory, tmp_path: Path, capsys) -> None:
    """`huluexport bench` on the int4 bundle with the gqa-static form (the one a GPU runs): the side names the
    quantized weights, and a decoded token reads the MatMulNBits bytes, not the fp32 ones."""
    import json

    docs = {}
    for name, b in (("int4", quantized("qwen2", 4)), ("fp32", gqa_bundle_factory("qwen2", "fp32", both=True))):
        js = tmp_path / f"{name}.json"
        code, _, err = _run(capsys, "bench", str(b), "--preset", "text", "--max-new-tokens", "4", "--repeats", "1",
                            "--warmup", "0", "--provider", "cpu", "--decoder-form", "gqa-static", "--json", str(js))
        assert code == 0, err
        docs[name] = json.loads(js.read_text())["sides"]["runtime"]
    assert docs["int4"]["description"].endswith("decoder_gqa (int4 weights)")
    assert docs["fp32"]["description"].endswith(", decoder_gqa")
    w4, w32 = (docs[k]["roofline"]["weights_bytes_per_token"] for k in ("int4", "fp32"))
    assert 0 < w4 < w32 / 3
