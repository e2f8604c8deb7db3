"""The native TensorRT backend's pieces that need no GPU: buffer sizes, the row copies that gather kept visual
rows, TensorRT dtypes without a numpy type, and the refusals made before an engine is deserialised (a GPU
tensorrt_rtx cannot target, a plugin library that is not there). TensorRT types and compute capabilities come
from the installed tensorrt_rtx module itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hulurt.backends.base import BackendError, BackendOptions
from hulurt.backends.tensorrt import buffer_plan, engine_for, np_dtype, row_copies
from hulurt.contract import Dims, dim_ranges, pieces
from hulurt.engines import meta as em
from hulurt.engines.profiles import profile_shapes

DIMS = Dims(hidden=64, vocab=320, layers=2, kv_heads=2, head_dim=16, vision_head_dim=16, act_dtype="float16")
RANGES = dim_ranges(max_context=512, max_frames=16, max_groups=256, opt_context=64, opt_groups=64)


def test_buffer_plan_at_the_profile_maximum_and_no_data_dependent_outputs() -> None:
    prof = profile_shapes(pieces(DIMS)["embed"], RANGES)
    dt = {"input_ids": np.dtype(np.int64), "visual_embeds": np.dtype(np.float16), "inputs_embeds": np.dtype(np.float16)}
    sizes = buffer_plan(prof, {"inputs_embeds": (1, 512, 64)}, dt)
    assert sizes == {"input_ids": 512 * 8, "visual_embeds": 512 * 64 * 2, "inputs_embeds": 512 * 64 * 2}
    with pytest.raises(BackendError, match=r"embed.plan: output 'inputs_embeds' has shape \(1, -1, 64\).*data-dep"):
        buffer_plan(prof, {"inputs_embeds": (1, -1, 64)}, dt, "embed.plan")


def test_row_copies_one_per_run_of_kept_rows_after_the_rows_already_there() -> None:
    keep = np.array([[1, 1, 0, 1], [0, 0, 1, 1]], dtype=bool)
    assert row_copies(keep, 10, 0, 1000, "v") == [(0, 0, 20), (20, 30, 10), (30, 60, 20)]
    assert row_copies(keep, 10, 3, 1000, "v")[0] == (30, 0, 20)  # the second input's rows follow the first's
    assert row_copies(np.zeros(4, dtype=bool), 10, 0, 0, "v") == []
    assert row_copies(keep, 10, 5, 100, "v")[-1] == (80, 60, 20)  # exactly full: 10 rows of 10 bytes
    with pytest.raises(BackendError, match=r"vision.plan: 11 visual rows do not fit .* of 10 rows"):
        row_copies(keep, 10, 6, 100, "vision.plan")


trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: its dtypes and GPU list NOT checked")


def test_np_dtype_of_engine_tensors() -> None:
    assert np_dtype(trt, trt.DataType.HALF, "x", "e") == np.float16
    assert np_dtype(trt, trt.DataType.INT64, "x", "e") == np.int64
    assert np_dtype(trt, trt.DataType.BOOL, "x", "e") == np.bool_
    for t in (trt.DataType.BF16, trt.DataType.FP8, trt.DataType.INT4):
        with pytest.raises(BackendError, match=rf"decoder.plan: tensor 'logits' is {t.name}, which has no numpy"):
            np_dtype(trt, t, "logits", "decoder.plan")


def _engines(tmp: Path, plugins: list[dict[str, str]] | None = None) -> Path:
    d = tmp / em.dir_name("portable", trt.__name__, trt.__version__)
    d.mkdir(parents=True)
    (d / "decoder.plan").write_bytes(b"\x01plan bytes" * 100)
    entry = em.EngineEntry("decoder", "decoder.plan", 1100, em.sha256_file(d / "decoder.plan"), "decoder.onnx",
                           "ab" * 32, "fp16", 1.5, [profile_shapes(pieces(DIMS)["decoder"], RANGES)])
    em.write(em.EngineMeta(d, trt.__name__, trt.__version__, "portable", (), True,
                           {"strongly_typed": True, "plugins": plugins or []}, {"target": "tiny"}, {"decoder": entry}))
    return d


def test_tensorrt_rtx_refuses_a_gpu_it_cannot_target(tmp_path: Path) -> None:
    """H100/H200 (9.0) and Orin (8.7) pass the portable engines' "8.0 and later" check; tensorrt_rtx has no
    such compute capability, so the runtime says so instead of failing inside TensorRT-RTX."""
    d = _engines(tmp_path)
    opts = BackendOptions(provider="trt-native", engines_dir=str(d))
    meta, piece = engine_for(tmp_path / "decoder.onnx", trt, opts, "8.9")
    assert piece == "decoder" and meta.root == d
    for cc in ("9.0", "8.7"):
        with pytest.raises(em.EngineError, match=rf"compute capability {cc}; tensorrt_rtx .* runs on .*SM89.*--module "
                           "tensorrt") as exc:
            engine_for(tmp_path / "decoder.onnx", trt, opts, cc)
        assert "\n" not in str(exc.value)


def test_missing_plugin_library_named_before_deserialising(tmp_path: Path) -> None:
    lib = tmp_path / "libhulu_plugins.so"
    d = _engines(tmp_path / "e", plugins=[{"path": str(lib), "sha256": "00" * 32}])
    opts = BackendOptions(provider="trt-native", engines_dir=str(d))
    with pytest.raises(em.EngineError, match=rf"engines.json: plugin library {lib} .* is not on this machine"):
        engine_for(tmp_path / "decoder.onnx", trt, opts, None)
    lib.write_bytes(b"\x7fELF")
    assert engine_for(tmp_path / "decoder.onnx", trt, opts, None)[1] == "decoder"
