"""Store transposed weights instead of transposing at run time (the exporter emits Transpose(W) for Linear).

before: W [out, in] (initializer) --Transpose(perm=[1, 0])--> Wt --MatMul(x, Wt)
after:  W.T [in, out] (initializer, transposed lazily while saving) --MatMul(x, W.T)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def run(model: ir.Model) -> ir.Model:
    g = model.graph
    folded = 0
    for node in list(g):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        src = node.inputs[0]
        if src is None or not src.is_initializer() or src.const_value is None:
            continue
        perm_attr = node.attributes.get("perm")
        rank = len(src.shape) if src.shape is not None else 0
        perm = list(perm_attr.as_ints()) if perm_attr is not None else list(range(rank))[::-1]
        shape = [int(src.shape[i]) for i in perm]
        new = ir.Value(name=f"{src.name}.T", shape=ir.Shape(shape), type=ir.TensorType(src.dtype))
        new.const_value = ir.LazyTensor(
            _transposed(src.const_value, perm, new.name),
            dtype=src.dtype,
            shape=ir.Shape(shape),
            name=new.name,
        )
        g.register_initializer(new)
        node.outputs[0].replace_all_uses_with(new)
        g.remove(node, safe=True)
        if not src.uses() and not src.is_graph_output():
            del g.initializers[src.name]
        folded += 1
    model.meta["folded_transposes"] = folded
    return model


def _transposed(tensor: ir.TensorProtocol, perm: list[int], name: str):
    def load() -> ir.Tensor:
        return ir.Tensor(np.ascontiguousarray(np.transpose(tensor.numpy(), perm)), name=name)

    return load
