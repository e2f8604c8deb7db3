"""Graph forms of the token reduction: the standard-op ONNX graph on onnxruntime equals the numpy oracle BIT FOR BIT
(no tolerance) on edge cases, random 8-bit volumes and real NIfTI/DICOM volumes; the custom-op form carries the
contract's name/domain/version/attrs; the standard form parses and builds with tensorrt-rtx.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import pytest
from hulurt import reduction
from hulurt.contract import TOKEN_REDUCE
from hulurt.preprocess import NORM_LUT
from hulurt.testing import near_threshold_volume

from huluexport.errors import ExportError
from huluexport.export.token_reduce import (
    KEPT_INDICES,
    TokenReduceSpec,
    insert_token_reduce,
    token_reduce_model,
)

ort = pytest.importorskip("onnxruntime")


def _u8_volume(rng: np.random.Generator, t: int, g: int, mm: int) -> np.ndarray:
    return near_threshold_volume(rng, t, g, (mm, 588))  # [T, G, mm, 588]


def _cases() -> list[tuple[str, np.ndarray, float, int]]:
    """(name, pixels [T, G, M, 588] float32, threshold, min_tokens): the same list the GPU tests use, plus ties."""
    rng = np.random.default_rng(6)
    n = NORM_LUT
    same = np.repeat(n[_u8_volume(rng, 1, 7, 4)], 5, axis=0)
    at = np.full((3, 4, 4, 588), 0.25, dtype=np.float32)
    at[1] = 0.375  # |diff| = 0.125 everywhere: mean == threshold -> dropped
    at[2] = 0.5
    at[2, 2:, :, :294] = 0.375 - 0.125 - 1.0 / 128.0  # tokens 2, 3: mean = 0.125 + 1/256 -> kept
    # bf16 ties: 1 + 3*2^-8 rounds up to 1.015625 (to even); truncation would give 1.0078125 and drop the token
    tie = np.zeros((2, 3, 1, 588), dtype=np.float32)
    tie[1] = 1.0 + 3.0 / 256.0
    return [
        ("one_frame", n[_u8_volume(rng, 1, 6, 4)], 0.1, 1),
        ("identical_frames", same, 0.1, 1),
        ("identical_frames_min3", same, 0.1, 3),
        ("identical_frames_min_over_nb", same, 0.1, 50),
        ("min_tokens_0", same, 0.1, 0),
        ("all_different", n[rng.integers(0, 256, size=(4, 9, 4, 588), dtype=np.uint8)], 0.1, 1),
        ("at_threshold", at, 0.125, 0),
        ("bf16_ties", tie, 1.01, 0),
        ("odd_grid_3x5_m2", n[_u8_volume(rng, 3, 15, 4)], 0.1, 1),
        ("odd_grid_7x1_m1", n[_u8_volume(rng, 5, 7, 1)], 0.1, 1),
        ("random_m1", n[_u8_volume(rng, 9, 33, 1)], 0.1, 1),
        ("random_m2", n[_u8_volume(rng, 9, 33, 4)], 0.1, 2),
        ("random_m2_many_frames", n[_u8_volume(rng, 70, 5, 4)], 0.1, 1),
    ]


CASES = _cases()


@functools.cache
def _session(
    threshold: float, min_tokens: int, mode: str, accumulate: str = "exact", with_indices: bool = True
):
    spec = TokenReduceSpec(threshold=threshold, min_tokens=min_tokens, mode=mode, accumulate=accumulate)
    model = token_reduce_model(spec, with_indices=with_indices)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _oracle(px: np.ndarray, threshold: float, min_tokens: int, mode: str) -> np.ndarray:
    return reduction.keep_mask(px.reshape(px.shape[0], px.shape[1], -1), threshold, min_tokens, mode)


def _check(
    px: np.ndarray, threshold: float, min_tokens: int, mode: str, accumulate: str = "exact"
) -> np.ndarray:
    keep, idx = _session(threshold, min_tokens, mode, accumulate).run(None, {"pixel_patches": px})
    want = _oracle(px, threshold, min_tokens, mode)
    assert keep.dtype == np.bool_ and keep.shape == want.shape
    np.testing.assert_array_equal(keep, want)
    np.testing.assert_array_equal(idx, reduction.compaction(want)[0])
    return keep


@pytest.mark.parametrize("mode", reduction.MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_standard_form_equals_oracle(case, mode: str) -> None:
    name, px, threshold, min_tokens = case
    keep = _check(px, threshold, min_tokens, mode)
    # known answers, independent of the oracle
    if name == "one_frame":
        assert keep.all()
    if name == "identical_frames":
        assert keep[1:].sum(axis=1).tolist() == [1] * 4 and keep[1:, 0].all()
    if name == "identical_frames_min3":
        assert keep[1:].sum(axis=1).tolist() == [3] * 4 and keep[1:, :3].all()
    if name == "identical_frames_min_over_nb" or name == "all_different":
        assert keep.all()
    if name == "min_tokens_0":
        assert not keep[1:].any()
    if name == "at_threshold":
        assert not keep[1].any() and keep[2].tolist() == [False, False, True, True]
    if name == "bf16_ties":
        assert keep[1].all()  # round-to-nearest-even in bf16 mode; exact 1.0117 > 1.01 in fp32 mode


@pytest.mark.parametrize("mode", reduction.MODES)
def test_float32_accumulation_on_8bit_pixels(mode: str) -> None:
    """The TensorRT-friendly form (no float64) also equals the oracle on 8-bit-derived pixels."""
    rng = np.random.default_rng(11)
    px = NORM_LUT[_u8_volume(rng, 24, 40, 4)]
    d = reduction.frame_token_diffs(px.reshape(24, 40, -1), mode)
    assert (np.abs(d - 0.1) < 2e-3).sum() > 50, "needs tokens near the threshold to mean anything"
    _check(px, 0.1, 1, mode, accumulate="float32")


def _real_volumes() -> list[tuple[str, str]]:
    out = []
    try:
        from nibabel.testing import data_path

        out.append(("nifti_anatomical", os.path.join(data_path, "anatomical.nii")))
    except ImportError:
        pass
    try:
        import pydicom

        out.append(
            (
                "dicom_us_cine",
                os.path.join(
                    os.path.dirname(pydicom.__file__), "data", "test_files", "examples_ybr_color.dcm"
                ),
            )
        )
    except ImportError:
        pass
    return out


@functools.cache
def _real_patches(path: str) -> np.ndarray:
    from hulurt import media, preprocess

    m = media.load_media(path)
    hw = preprocess.target_size(*m.hw, preprocess.PATCH_SIZE * 2, m.n_frames)
    return preprocess.preprocess_frames(m.frames, hw, 2).patches  # [T, G, 4, 588], the runtime's own path


@pytest.mark.parametrize("mode", reduction.MODES)
@pytest.mark.parametrize("vol", _real_volumes(), ids=lambda v: v[0])
def test_real_volumes_equal_oracle(vol, mode: str) -> None:
    name, path = vol
    if not os.path.isfile(path):
        pytest.skip(f"test data file {path} not shipped with this nibabel/pydicom")
    px = _real_patches(path)
    assert px.shape[0] > 10 and px.std() > 1e-2
    d = reduction.frame_token_diffs(px.reshape(px.shape[0], px.shape[1], -1), mode)
    assert d.std() > 1e-2, "degenerate volume: all frame differences alike"
    keep = _check(px, 0.1, 1, mode)
    for accumulate in ("float32",):  # 8-bit pixels: the float32 form must agree too
        _check(px, 0.1, 1, mode, accumulate)
    assert 0 < keep[1:].sum() < keep[1:].size, f"{name}: expected a mixed mask"


def test_custom_form_carries_the_contract() -> None:
    spec = TokenReduceSpec(threshold=0.2, min_tokens=3, mode="bf16")
    model = token_reduce_model(spec, form="custom", with_indices=True)
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    assert (node.op_type, node.domain) == (TOKEN_REDUCE.name, TOKEN_REDUCE.domain)
    assert {o.domain: o.version for o in model.opset_import}[TOKEN_REDUCE.domain] == TOKEN_REDUCE.version
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert set(attrs) == set(TOKEN_REDUCE.attrs)
    assert attrs["min_tokens"] == 3 and attrs["bf16"] == 1 and attrs["threshold"] == pytest.approx(0.2)
    kinds = {"float": onnx.AttributeProto.FLOAT, "int": onnx.AttributeProto.INT}
    assert all(a.type == kinds[TOKEN_REDUCE.attrs[a.name]] for a in node.attribute)
    assert list(node.input) == ["pixel_patches"]
    assert list(node.output) == [
        "keep_mask",
        KEPT_INDICES,
        "/token_reduce/n_kept",
    ]  # the plugin's three outputs


def test_insert_into_a_vision_like_graph() -> None:
    h = onnx.helper
    tp = onnx.TensorProto
    px = h.make_tensor_value_info("pixel_patches", tp.FLOAT, ["n_frames", "n_groups", "merge_group", 588])
    out = h.make_tensor_value_info("visual_embeds", tp.FLOAT, ["n_frames", "n_groups"])
    axes = onnx.numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    node = h.make_node("ReduceMean", ["pixel_patches", "axes"], ["visual_embeds"], keepdims=0)
    vision = h.make_model(
        h.make_graph([node], "vision", [px], [out], [axes]), opset_imports=[h.make_opsetid("", 18)]
    )
    merged = insert_token_reduce(vision, TokenReduceSpec(), with_indices=True)
    onnx.checker.check_model(merged, full_check=True)
    assert [o.name for o in merged.graph.output] == ["visual_embeds", "keep_mask", KEPT_INDICES]
    rng = np.random.default_rng(3)
    x = NORM_LUT[_u8_volume(rng, 6, 10, 4)]
    sess = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    emb, keep, idx = sess.run(None, {"pixel_patches": x})
    assert emb.shape == (6, 10) and emb.std() > 1e-2  # the host graph still runs beside the reduction
    np.testing.assert_array_equal(keep, _oracle(x, 0.1, 1, "bf16"))
    np.testing.assert_array_equal(idx, reduction.compaction(keep)[0])
    with pytest.raises(ExportError, match="already produces 'keep_mask'"):
        insert_token_reduce(merged, TokenReduceSpec())
    with pytest.raises(ExportError, match="no input 'pixels'"):
        insert_token_reduce(vision, TokenReduceSpec(), pixels="pixels")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "fp16"}, "mode 'fp16'"),
        ({"min_tokens": -1}, "min_tokens -1"),
        ({"threshold": float("nan")}, "threshold"),
        ({"accumulate": "fp64"}, "accumulate='fp64'"),
    ],
)
def test_spec_rejects_bad_values(kwargs, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        TokenReduceSpec(**kwargs)


def test_unknown_form_and_old_opset() -> None:
    with pytest.raises(ExportError, match="form 'plugin'"):
        token_reduce_model(TokenReduceSpec(), form="plugin")
    with pytest.raises(ExportError, match="opset >= 15"):
        token_reduce_model(TokenReduceSpec(), opset=13)


@pytest.mark.trt
@pytest.mark.parametrize(
    "mode, accumulate", [("bf16", "float32"), ("bf16", "exact"), ("fp32", "float32")], ids=lambda v: str(v)
)
def test_standard_form_parses_and_builds_with_tensorrt_rtx(tmp_path, mode: str, accumulate: str) -> None:
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: TensorRT check NOT run")
    from hulurt.contract import Dims, dim_ranges, pieces

    from huluexport.export.tensorrt import build_engine

    model = token_reduce_model(TokenReduceSpec(mode=mode, accumulate=accumulate))
    path = tmp_path / "token_reduce.onnx"
    onnx.save(model, path)
    spec = pieces(Dims(hidden=8, vocab=8, layers=1, kv_heads=1, head_dim=8, vision_head_dim=8))[
        "token_reduce"
    ]
    ranges = dim_ranges(max_context=4096, max_frames=160, max_groups=1024)
    res = build_engine(path, spec, ranges, trt, tmp_path / "token_reduce.plan")
    assert res.engine_bytes > 0 and (tmp_path / "token_reduce.plan").stat().st_size == res.engine_bytes
