"""The weight folds of the export passes on hand-built graphs: fold_weight_concats (the packed q/k/v weight),
fold_weight_casts (norm weights in the activation dtype) and drop_unused_outputs. End to end they run in every
gqa-static build (tests/export/test_gqa_parity.py, test_replicate_layers.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from huluexport.export.passes import drop_unused_outputs, fold_weight_casts, fold_weight_concats
from huluexport.export.passes.fold_weight_concats import joined_name


def _model(nodes, inputs, outputs, inits) -> ir.Model:
    g = h.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 20), h.make_opsetid("com.microsoft", 1)])
    return ir.serde.deserialize_model(proto)


def _run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_concat_of_weights_becomes_one_initializer() -> None:
    rng = np.random.default_rng(0)
    w = {f"layers.3.self_attn.{p}_proj.weight": rng.standard_normal((n, 8)).astype(np.float32)
         for p, n in (("q", 8), ("k", 4), ("v", 4))}
    m = _model(
        [h.make_node("Concat", list(w), ["w"], axis=0), h.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
         h.make_node("MatMul", ["x", "wt"], ["y"])],
        [h.make_tensor_value_info("x", TP.FLOAT, [2, 8])], [h.make_tensor_value_info("y", TP.FLOAT, [2, 16])], w,
    )
    x = rng.standard_normal((2, 8)).astype(np.float32)
    want = _run(m, {"x": x})[0]
    fold_weight_concats.run(m)
    assert m.meta["folded_concats"] == 1
    assert list(m.graph.initializers) == ["layers.3.self_attn.q_proj+k_proj+v_proj.weight"]
    assert [n.op_type for n in m.graph] == ["Transpose", "MatMul"]
    np.testing.assert_array_equal(m.graph.initializers["layers.3.self_attn.q_proj+k_proj+v_proj.weight"]
                                  .const_value.numpy(), np.concatenate(list(w.values())))
    np.testing.assert_array_equal(_run(m, {"x": x})[0], want)


def test_concat_with_a_computed_input_is_left_alone() -> None:
    a = np.ones((2, 3), np.float32)
    m = _model([h.make_node("Concat", ["a", "x"], ["y"], axis=0)],
               [h.make_tensor_value_info("x", TP.FLOAT, [2, 3])], [h.make_tensor_value_info("y", TP.FLOAT, [4, 3])],
               {"a": a})
    fold_weight_concats.run(m)
    assert m.meta["folded_concats"] == 0 and [n.op_type for n in m.graph] == ["Concat"]


def test_joined_names() -> None:
    assert joined_name(["a.1.q.w", "a.1.k.w", "a.1.v.w"]) == "a.1.q+k+v.w"
    assert joined_name(["a.1.q_proj.bias", "a.1.k_proj.bias"]) == "a.1.q_proj+k_proj.bias"
    assert joined_name(["p", "q"]) == "p+q"


def test_weight_cast_only_where_every_use_is_the_same_cast() -> None:
    w = np.array([0.5, 1.25, -2.0, 3.0], np.float32)
    m = _model(
        [h.make_node("Cast", ["w"], ["w16"], to=TP.FLOAT16), h.make_node("Mul", ["x", "w16"], ["y"]),
         h.make_node("Cast", ["u"], ["u16"], to=TP.FLOAT16), h.make_node("Add", ["x", "u16"], ["z0"]),
         h.make_node("Cast", ["z0"], ["z"], to=TP.FLOAT), h.make_node("Add", ["z", "u"], ["z2"])],
        [h.make_tensor_value_info("x", TP.FLOAT16, [4])],
        [h.make_tensor_value_info("y", TP.FLOAT16, [4]), h.make_tensor_value_info("z2", TP.FLOAT, [4])],
        {"w": w, "u": w.copy()},
    )
    x = np.arange(4, dtype=np.float16)
    want = _run(m, {"x": x})
    fold_weight_casts.run(m)
    assert m.meta["folded_casts"] == 1  # u is also read as fp32: it keeps its Cast
    assert m.graph.initializers["w"].dtype == ir.DataType.FLOAT16
    assert m.graph.initializers["u"].dtype == ir.DataType.FLOAT
    assert [n.op_type for n in m.graph].count("Cast") == 2
    for got, ref in zip(_run(m, {"x": x}), want):
        np.testing.assert_array_equal(got, ref)


def test_unused_optional_outputs_are_unnamed() -> None:
    node = h.make_node("SkipSimplifiedLayerNormalization", ["x", "s", "g"], ["y", "mean", "inv_std", "sum"],
                       domain="com.microsoft", epsilon=1e-6)
    m = _model([node], [h.make_tensor_value_info(n, TP.FLOAT, [1, 2, 4]) for n in ("x", "s")],
               [h.make_tensor_value_info(n, TP.FLOAT, [1, 2, 4]) for n in ("y", "sum")],
               {"g": np.ones(4, np.float32)})
    drop_unused_outputs.run(m)
    proto = ir.serde.serialize_model(m)
    assert list(proto.graph.node[0].output) == ["y", "", "", "sum"]  # sum is a graph output: kept
    onnx.checker.check_model(proto)
    x = np.ones((1, 2, 4), np.float32)
    y, total = _run(m, {"x": x, "s": x})
    np.testing.assert_allclose(total, 2 * x)
    np.testing.assert_allclose(y, np.ones_like(x), rtol=1e-5)
