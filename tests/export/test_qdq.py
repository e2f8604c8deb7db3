"""`huluexport quantize --format qdq`: the tiny qwen2 fp16 bundle -> a decoder of INT4 weights behind blocked
DequantizeLinear (opset 21, no zero points); the graph, the packed weights, `verify` within the int4-qdq entry,
tensorrt-rtx building it, and `huluexport plan` predicting exactly the bytes written."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_main import run_main as _run
from hulurt.manifest import load_manifest
from onnx import numpy_helper
from stderr_lines import error_text

from huluexport.cli import main
from huluexport.config import SIZES
from huluexport.export import qdq
from huluexport.export.quantize import read_weight
from huluexport.plan import INT4_GROUP, weight_bytes
from huluexport.validate import verify

BLOCK = 32  # the tiny decoder's input dims are 64 and 128; real sizes use the default 128


@pytest.fixture(scope="module")
def src(bundle_factory) -> Path:
    return bundle_factory("qwen2", "fp16")


@pytest.fixture(scope="module")
def q(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qdq") / "int4-qdq"
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exc:
        main(["quantize", str(src), "--out", str(out), "--bits", "4", "--format", "qdq", "--block-size", str(BLOCK)])
        raise SystemExit(0)
    assert exc.value.code in (0, None)
    return out


def _graph(b: Path) -> onnx.ModelProto:
    return onnx.load(str(b / "decoder.onnx"), load_external_data=False)


def test_decoder_matmuls_become_int4_dequantize(q: Path) -> None:
    m = load_manifest(q, verify_hashes=True)
    e = m.pieces["decoder"]
    assert e.precision == "int4" and e.compute["quant_format"] == "qdq" and "no zero points" in e.compute["weights"]
    assert m.pieces["embed"].precision == "fp16" and m.pieces["vision"].precision == "fp16"
    g = onnx.load(str(q / "decoder.onnx"))
    ops = qdq.count_ops(g)
    assert ops == {"DequantizeLinear(int4)": 7 * m.dims.layers + 1, "MatMul(const weight)": 0, "Gemm(const weight)": 0}
    assert {o.version for o in g.opset_import if o.domain in ("", "ai.onnx")} == {qdq.OPSET}
    inits = {t.name: t for t in g.graph.initializer}
    for n in g.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"axis": 0, "block_size": BLOCK} and len(n.input) == 2  # no zero point input
        w, s = inits[n.input[0]], inits[n.input[1]]
        assert w.data_type == onnx.TensorProto.INT4 and s.data_type == onnx.TensorProto.FLOAT16
        assert list(s.dims) == [w.dims[0] // BLOCK, w.dims[1]]
    onnx.checker.check_model(g)


def test_packed_weights_are_the_rounded_source(src: Path, q: Path) -> None:
    """The lm_head (a Gemm(transB=1) in the source): unpacked INT4 values == RTN of the source, and the
    dequantized matrix is within half a step of it."""
    s_model = _graph(src)
    w_src = next(t for t in s_model.graph.initializer if t.name == "lm_head.weight")
    src_w = read_weight(w_src, src).astype(np.float32).T  # [K, N]
    g = onnx.load(str(q / "decoder.onnx"))
    inits = {t.name: t for t in g.graph.initializer}
    wq = numpy_helper.to_array(inits["lm_head.weight_int4"]).astype(np.int8)
    scale = numpy_helper.to_array(inits["lm_head.weight_scale"]).astype(np.float32)
    want_q, want_s = qdq.quantize_matrix(src_w, BLOCK, "lm_head", np.float16)
    assert wq.min() >= -8 and wq.max() <= 7 and np.array_equal(wq, want_q)
    assert np.array_equal(scale, want_s.astype(np.float32))
    err = np.abs(qdq.dequantize(wq, scale, BLOCK) - src_w)
    assert (err <= np.repeat(scale, BLOCK, axis=0) * 0.5 * (1 + 2**-9)).all()


def test_verify_passes_with_its_own_tolerance(q: Path, ckpt_qwen2: Path) -> None:
    report = verify(q, ckpt_qwen2, steps=16, verify_hashes=False)  # a folder build: the manifest names no path
    dec = [r for r in report.rows if r.piece == "decoder"]
    assert dec and all(r.tolerance.reason.startswith("int4 RTN symmetric") for r in dec)
    assert report.ok, report.table()


def test_tensorrt_rtx_builds_the_int4_decoder(q: Path) -> None:
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: int4 engine NOT built")
    from hulurt.engines import meta as em
    from hulurt.engines.__main__ import main as engines_main

    assert engines_main([str(q), "--piece", "decoder"]) == 0
    meta = em.read(q / "engines" / em.dir_name("portable", "tensorrt_rtx", trt.__version__))
    assert meta.engines["decoder"].precision == "int4" and meta.engines["decoder"].bytes > 0


def test_plan_predicts_the_bytes_quantize_writes(src: Path, q: Path) -> None:
    """Every int4 matrix + its fp16 scales as written == the planner's decoder matrices at int4 (same block),
    and the embedding table the planner leaves at fp16 == the embed piece's table."""
    assert INT4_GROUP == qdq.DEFAULT_BLOCK
    cfg = SIZES["tiny"]
    g = onnx.load(str(q / "decoder.onnx"))
    inits = {t.name: t for t in g.graph.initializer}
    written = 0
    for n in g.graph.node:
        if n.op_type == "DequantizeLinear":
            written += len(inits[n.input[0]].raw_data) + len(inits[n.input[1]].raw_data)
    emb_model = onnx.load(str(src / "embed.onnx"), load_external_data=False)
    table = max(emb_model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    assert list(table.dims) == [cfg.decoder.vocab, cfg.decoder.hidden] and table.data_type == onnx.TensorProto.FLOAT16
    wb = weight_bytes(cfg, "int4", int4_group=BLOCK)
    assert wb.embed_tokens == 2 * cfg.decoder.vocab * cfg.decoder.hidden
    assert wb.decoder_matrices - wb.embed_tokens == written


def test_qdq_refusals(src: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "quantize", str(src), "--out", str(tmp_path / "a"), "--bits", "8", "--format", "qdq")
    assert code != 0 and "int4 only" in err and error_text(err).count("\n") == 1
    code, _, err = _run(capsys, "quantize", str(src), "--out", str(tmp_path / "b"), "--bits", "4", "--format", "qdq")
    assert code != 0 and "input dim 64 is not a multiple of --block-size 128" in err  # default 128, tiny dims
    assert not (tmp_path / "b").exists()
