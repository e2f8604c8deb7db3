"""`huluexport quantize` streams each tensor to the output's external data file as it is made
(huluexport/export/extdata.py); the files must be byte for byte what the whole-model `onnx.save_model` wrote
before (the values themselves are checked against onnxruntime's MatMulNBitsQuantizer in test_quantize.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import load_external_data_for_tensor

from huluexport import progress
from huluexport.export.extdata import DataWriter, external
from huluexport.export.pipeline import INLINE_BYTES
from huluexport.export.quantize import quantize_bundle


def _resaved(bundle: Path, tmp: Path) -> Path:
    """The quantized decoder loaded whole and saved the way quantize saved it before it streamed."""
    model = onnx.load(str(bundle / "decoder.onnx"))  # every external tensor back into raw_data
    out = tmp / "resaved"
    out.mkdir()
    onnx.save_model(model, str(out / "decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="decoder.onnx.data", size_threshold=INLINE_BYTES)
    return out


@pytest.mark.parametrize(
    ("precision", "bits", "symmetric"), [("fp32", 4, False), ("fp32", 8, False), ("fp16", 4, False),
                                         ("fp32", 4, True)]
)
def test_streamed_files_equal_the_whole_model_save(bundle_factory, tmp_path: Path, precision: str, bits: int,
                                                   symmetric: bool) -> None:
    src = bundle_factory("qwen2", precision)
    q = quantize_bundle(src, tmp_path / "q", bits=bits, block_size=32, symmetric=symmetric)
    ref = _resaved(q, tmp_path)
    for name in ("decoder.onnx.data", "decoder.onnx"):
        got, want = (q / name).read_bytes(), (ref / name).read_bytes()
        assert len(got) == len(want) and got == want, name
    # the stream wrote the kept float initializers (norms) too, and they are the source's bytes
    model = onnx.load(str(q / "decoder.onnx"))
    fp = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(src / "decoder.onnx")).graph.initializer}
    kept = [t for t in model.graph.initializer if t.name in fp]
    assert kept and all(np.array_equal(onnx.numpy_helper.to_array(t), fp[t.name]) for t in kept)
    # (at tiny width they stay inline; test_writer_copies_loaded_tensors_as_load_then_save covers external ones)


def test_save_phase_counts_the_bytes_it_streamed(bundle_factory, tmp_path: Path) -> None:
    """The save phase's total is known before the first weight is read and is what gets written."""
    src = bundle_factory("qwen2", "fp16")
    progress.reset()
    q = quantize_bundle(src, tmp_path / "q", bits=8, block_size=32)
    recs = {r.name: r for r in progress.records()}
    save = recs["decoder.onnx: save"]
    assert save.done == save.total == (q / "decoder.onnx.data").stat().st_size > 0
    matrices = recs["decoder.onnx: quantize to int8"]
    assert matrices.done == matrices.total > 0 and matrices.unit == "matrices"
    progress.reset()


def _tensors(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    # sizes around the threshold (onnx compares sys.getsizeof(raw_data), i.e. 33 bytes over the length)
    sizes = [1, 950, 990, 991, 992, 1023, 1024, 1025, 4000]
    out = [(f"u8_{n}", rng.integers(0, 255, n, dtype=np.uint8)) for n in sizes]
    out += [("f16", rng.standard_normal((3, 300)).astype(np.float16)),
            ("f32", rng.standard_normal((17, 33)).astype(np.float32)),
            ("i64", np.arange(5, dtype=np.int64))]
    return out


def test_writer_lays_out_tensors_as_onnx_save_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = _tensors(rng)
    inits = [onnx.numpy_helper.from_array(a, n) for n, a in arrays]
    graph = onnx.helper.make_graph([], "g", [], [], initializer=inits)
    want_dir, got_dir = tmp_path / "want", tmp_path / "got"
    want_dir.mkdir()
    got_dir.mkdir()
    onnx.save_model(onnx.helper.make_model(graph), str(want_dir / "m.onnx"), save_as_external_data=True,
                    location="m.onnx.data", size_threshold=INLINE_BYTES)
    streamed = []
    with DataWriter(got_dir / "m.onnx.data", "m.onnx.data", INLINE_BYTES) as w:
        for n, a in arrays:
            t = onnx.TensorProto(name=n, dims=a.shape, data_type=onnx.helper.np_dtype_to_tensor_dtype(a.dtype))
            w.put(t, a)
            streamed.append(t)
    onnx.save_model(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=streamed)),
                    str(got_dir / "m.onnx"))
    for name in ("m.onnx", "m.onnx.data"):
        assert (got_dir / name).read_bytes() == (want_dir / name).read_bytes(), name
    assert [external(a.nbytes, INLINE_BYTES) for _, a in arrays[:9]] == [False] * 3 + [True] * 6


def test_writer_copies_loaded_tensors_as_load_then_save(tmp_path: Path) -> None:
    """A tensor read from a source's external data and kept: the old path loaded it into the proto
    (load_external_data_for_tensor) and let onnx.save_model write it again; `put(loaded=True)` gives the same
    proto, for tensors that go external and for one small enough to come back inline."""
    rng = np.random.default_rng(1)
    arrays = _tensors(rng)
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(onnx.helper.make_model(onnx.helper.make_graph(
        [], "g", [], [], initializer=[onnx.numpy_helper.from_array(a, n) for n, a in arrays])),
        str(src / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    base = onnx.load(str(src / "m.onnx"), load_external_data=False)
    old, new = onnx.ModelProto(), onnx.ModelProto()
    old.CopyFrom(base)
    new.CopyFrom(base)
    for t in old.graph.initializer:
        load_external_data_for_tensor(t, str(src))
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    onnx.save_model(old, str(tmp_path / "old" / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=INLINE_BYTES)
    with DataWriter(tmp_path / "new" / "m.onnx.data", "m.onnx.data", INLINE_BYTES) as w:
        for t, (_, a) in zip(new.graph.initializer, arrays, strict=True):
            w.put(t, a, loaded=True)
    onnx.save_model(new, str(tmp_path / "new" / "m.onnx"))
    for name in ("m.onnx", "m.onnx.data"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes(), name
    shutil.rmtree(src)
