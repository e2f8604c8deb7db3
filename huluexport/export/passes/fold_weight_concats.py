"""Store a concatenation of weights as one weight instead of concatenating at run time.

before: q_proj.weight, k_proj.weight, v_proj.weight --Concat(axis=0)--> W --Transpose--> MatMul(x, .)
after:  q_proj+k_proj+v_proj.weight (one initializer, concatenated lazily while saving) --Transpose--> ...

The gqa-static decoder projects q, k and v with one packed MatMul (export/gqa.py, `qkv_projection`). Runs after
attach_weights and before fold_weight_transposes (which then stores the packed weight transposed) in both the
full-trace and the replicated path, so no weight is read at build time. The name joins the parts between the
common prefix and suffix:
layers.3.self_attn.{q_proj,k_proj,v_proj}.weight -> layers.3.self_attn.q_proj+k_proj+v_proj.weight.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def run(model: ir.Model) -> ir.Model:
    g = model.graph
    folded = 0
    for node in list(g):
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        srcs = list(node.inputs)
        if any(s is None or not s.is_initializer() or s.const_value is None for s in srcs):
            continue
        if len({s.dtype for s in srcs}) != 1 or any(s.shape is None for s in srcs):
            continue
        rank = len(srcs[0].shape)
        axis = node.attributes["axis"].as_int() % rank
        shapes = [[int(d) for d in s.shape] for s in srcs]
        if any(len(sh) != rank or sh[:axis] + sh[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :]
               for sh in shapes):
            continue
        shape = list(shapes[0])
        shape[axis] = sum(sh[axis] for sh in shapes)
        name = joined_name([s.name or "" for s in srcs])
        new = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(srcs[0].dtype))
        new.const_value = ir.LazyTensor(
            _concatenated([s.const_value for s in srcs], axis, name),  # type: ignore[misc]
            dtype=srcs[0].dtype,
            shape=ir.Shape(shape),
            name=name,
        )
        g.register_initializer(new)
        node.outputs[0].replace_all_uses_with(new)
        g.remove(node, safe=True)
        for s in srcs:
            if not s.uses() and not s.is_graph_output() and s.name in g.initializers:
                del g.initializers[s.name]
        folded += 1
    model.meta["folded_concats"] = folded
    return model


def joined_name(names: list[str]) -> str:
    """a.b.{x,y,z}.w -> a.b.x+y+z.w (dot-separated components; the parts between the common prefix and suffix)."""
    parts = [n.split(".") for n in names]
    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    suf = 0
    while all(len(p) > pre + suf + 1 for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    middle = "+".join(".".join(p[pre : len(p) - suf]) for p in parts)
    return ".".join([*parts[0][:pre], middle, *parts[0][len(parts[0]) - suf :]])


def _concatenated(tensors: list[ir.TensorProtocol], axis: int, name: str):
    def load() -> ir.Tensor:
        return ir.Tensor(np.concatenate([t.numpy() for t in tensors], axis=axis), name=name)

    return load
