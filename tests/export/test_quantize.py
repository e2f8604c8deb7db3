"""`huluexport quantize`: tiny fp32 bundle -> int8 / int4 weight-only decoder (MatMulNBits); the graph rewrite,
the manifest (and its strictness), the runtime generating from it, and `verify` within the int8/int4 tolerances."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hulurt
import numpy as np
import onnx
import pytest
from cli_main import run_main as _run
from hulurt.errors import ManifestError
from hulurt.manifest import load_manifest

from huluexport.errors import ConfigError
from huluexport.export.quantize import count_ops, quantize_bundle
from huluexport.validate import verify

_Q: dict[int, Path] = {}


@pytest.fixture(scope="module")
def src(bundle_factory) -> Path:
    """The tiny qwen2 fp32 bundle of tests/export/conftest.py (built from a checkpoint: it has a tokenizer)."""
    return bundle_factory("qwen2", "fp32")


@pytest.fixture(scope="module")
def quantized(src: Path, tmp_path_factory: pytest.TempPathFactory):
    def get(bits: int) -> Path:
        if bits not in _Q:
            _Q[bits] = quantize_bundle(
                src, tmp_path_factory.mktemp("q") / f"int{bits}", bits=bits, block_size=32
            )
        return _Q[bits]

    return get


def _decoder(b: Path) -> onnx.ModelProto:
    return onnx.load(str(b / "decoder.onnx"), load_external_data=False)


@pytest.mark.parametrize("bits", [8, 4])
def test_decoder_matmuls_become_matmulnbits(src: Path, quantized, bits: int) -> None:
    before = count_ops(onnx.load(str(src / "decoder.onnx"), load_external_data=False))
    q = quantized(bits)
    after = count_ops(_decoder(q))
    # 7 projections per layer + the lm_head (a Gemm(transB=1) in the fp32 graph)
    n_layers = load_manifest(q, verify_hashes=False).dims.layers
    assert before["Gemm(const weight)"] == 1 and before["MatMulNBits"] == 0
    assert after["MatMulNBits"] == 7 * n_layers + 1
    assert after["MatMul(const weight)"] == 0 and after["Gemm(const weight)"] == 0
    bits_attr = {
        onnx.helper.get_attribute_value(a)
        for n in _decoder(q).graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "bits"
    }
    assert bits_attr == {bits}
    # weights on disk shrink (tiny dims: scales/zero points weigh more than at 7B width)
    m_src, m_q = load_manifest(src, verify_hashes=False), load_manifest(q, verify_hashes=True)
    size = {
        k: sum(m.files[f].bytes for f in (m.pieces["decoder"].file, m.pieces["decoder"].data) if f)
        for k, m in (("src", m_src), ("q", m_q))
    }
    assert size["q"] < size["src"]
    # only the decoder changed
    for piece in ("vision", "embed"):
        assert m_q.pieces[piece] == m_src.pieces[piece]
        assert m_q.files[m_q.pieces[piece].file].sha256 == m_src.files[m_src.pieces[piece].file].sha256


@pytest.mark.parametrize("bits", [8, 4])
def test_same_weights_as_onnxruntimes_own_quantizer(src: Path, quantized, bits: int) -> None:
    """Our one-weight-at-a-time driver writes exactly what MatMulNBitsQuantizer.process() writes for every MatMul
    (process() leaves the lm_head Gemm alone; ours also takes it, checked by the test above)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    full = onnx.load(str(src / "decoder.onnx"))
    q = MatMulNBitsQuantizer(full, bits=bits, block_size=32, accuracy_level=4)
    q.process()
    want = {t.name: onnx.numpy_helper.to_array(t) for t in q.model.model.graph.initializer}
    got = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(quantized(bits) / "decoder.onnx")).graph.initializer
    }
    names = [k for k in want if k.endswith(f"_Q{bits}")]
    assert len(names) == 7 * load_manifest(src, verify_hashes=False).dims.layers
    for k in names:
        for part in (k, k.replace(f"_Q{bits}", "_scales"), k.replace(f"_Q{bits}", "_zero_points")):
            assert got[part].dtype == want[part].dtype and np.array_equal(got[part], want[part]), part
    nodes = {n.name: n for n in q.model.model.graph.node if n.op_type == "MatMulNBits"}
    mine = {n.name: n for n in _decoder(quantized(bits)).graph.node if n.op_type == "MatMulNBits"}
    for name, n in nodes.items():
        assert list(mine[name].input) == list(n.input) and list(mine[name].output) == list(n.output)
        assert {a.name: onnx.helper.get_attribute_value(a) for a in mine[name].attribute} == {
            a.name: onnx.helper.get_attribute_value(a) for a in n.attribute
        }


@pytest.mark.parametrize("bits", [8, 4])
def test_manifest_records_the_precision(quantized, bits: int) -> None:
    m = load_manifest(quantized(bits), verify_hashes=True)
    e = m.pieces["decoder"]
    assert m.precision == "fp32" and m.dims.act_dtype == "float32"
    assert e.precision == f"int{bits}"
    assert e.compute["weights"].startswith(f"int{bits}-weight-only (MatMulNBits, block 32")
    assert "accuracy_level 4), activations float32 (matmul inputs int8 per block" in e.compute["weights"]


def test_runtime_generates_from_the_quantized_bundle(src: Path, quantized) -> None:
    prompt = "Describe the heart."
    ref = (
        hulurt.load(src, provider="cpu", threads=1).generate(prompt, max_new_tokens=8, stop_ids=()).token_ids
    )
    out = {}
    for bits in (8, 4):
        model = hulurt.load(quantized(bits), provider="cpu", threads=1)
        out[bits] = model.generate(prompt, max_new_tokens=8, stop_ids=()).token_ids
        assert len(out[bits]) == 8 and len(set(out[bits])) > 1
    assert (
        out[8][0] == ref[0]
    )  # int8 keeps at least the first greedy token of the fp32 bundle (measured: 8/8)


@pytest.mark.parametrize("bits", [8, 4])
def test_verify_within_the_quantized_tolerances(quantized, ckpt_qwen2: Path, bits: int) -> None:
    report = verify(quantized(bits), ckpt_qwen2, steps=8, verify_hashes=False)
    dec = [r for r in report.rows if r.piece == "decoder"]
    assert dec and all(r.tolerance.reason for r in dec)
    assert all(r.tolerance is dec[0].tolerance for r in dec)
    assert report.ok, report.table()
    for r in dec:
        assert r.ref_std > 1e-2  # non-degenerate reference
        assert r.max_abs > 0  # a quantized decoder that matched bit for bit would mean nothing was quantized
    # the other pieces keep their fp32 entries
    assert all(r.tolerance.max_abs is not None for r in report.rows if r.piece in ("vision", "embed"))


def test_cli_quantize_and_errors(src: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-int4"
    code, stdout, err = _run(
        capsys, "quantize", str(src), "--out", str(out), "--bits", "4", "--block-size", "32"
    )
    assert f"bundle: {out}" in stdout
    assert code == 0, err
    assert load_manifest(out, verify_hashes=True).pieces["decoder"].precision == "int4"
    code, _, err = _run(capsys, "quantize", str(src), "--out", str(out), "--bits", "4")
    assert code == 2 and f"{out}: already exists" in err
    code, _, err = _run(capsys, "quantize", str(src), "--out", str(tmp_path / "x"), "--bits", "3")
    assert code != 0 and "--bits" in err and not (tmp_path / "x").exists()
    # an already quantized bundle is refused, naming the piece and its precision
    with pytest.raises(ConfigError, match="already int4"):
        quantize_bundle(out, tmp_path / "twice", bits=8)
    with pytest.raises(ConfigError, match="vision"):
        quantize_bundle(src, tmp_path / "v", bits=8, pieces=("vision",))


def _edit(b: Path, dst: Path, fn) -> Path:
    shutil.copytree(b, dst)
    p = dst / "manifest.json"
    raw = json.loads(p.read_text())
    fn(raw)
    p.write_text(json.dumps(raw))
    return dst


def test_manifest_still_rejects_unknown_precisions(quantized, tmp_path: Path) -> None:
    q = quantized(4)

    def piece(v: str):
        return lambda raw: raw["pieces"]["decoder"].__setitem__("precision", v)

    for value in ("int3", "nf4", "fp16"):  # fp16 piece in an fp32 bundle: not the bundle's precision either
        with pytest.raises(ManifestError, match=r"pieces\.decoder\.precision"):
            load_manifest(_edit(q, tmp_path / value, piece(value)), verify_hashes=False)
    with pytest.raises(ManifestError, match="'precision'"):
        load_manifest(
            _edit(q, tmp_path / "top", lambda raw: raw.__setitem__("precision", "int4")), verify_hashes=False
        )

    def no_weights(raw):
        raw["pieces"]["decoder"]["compute"].pop("weights")

    with pytest.raises(ManifestError, match=r"compute\['weights'\]"):
        load_manifest(_edit(q, tmp_path / "nw", no_weights), verify_hashes=False)


def test_fp16_bundle_quantizes_with_fp16_scales(bundle_factory, ckpt_qwen2: Path, tmp_path: Path) -> None:
    q = quantize_bundle(bundle_factory("qwen2", "fp16"), tmp_path / "fp16-int4", bits=4)
    m = load_manifest(q, verify_hashes=True)
    assert m.precision == "fp16" and m.pieces["decoder"].precision == "int4"
    scales = [t for t in _decoder(q).graph.initializer if t.name.endswith("_scales")]
    assert scales and {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
    report = verify(q, ckpt_qwen2, steps=4, verify_hashes=False)
    dec = [r for r in report.rows if r.piece == "decoder"]
    # the int4 entry of huluexport/tolerances.py holds with fp16 activations too
    assert dec and report.ok, report.table()
