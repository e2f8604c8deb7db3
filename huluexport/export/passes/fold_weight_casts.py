"""Store a weight in the dtype the graph casts it to instead of casting at run time.

before: W fp32 (initializer) --Cast(to=fp16)--> W16 --SimplifiedLayerNormalization(x16, W16)
after:  W fp16 (initializer, cast lazily while saving) --SimplifiedLayerNormalization(x16, W)

The gqa-static decoder's norms (export/gqa.py) take their weight in the activation dtype while the fp16
pieces keep norm weights in fp32 modules (pieces.to_precision). Folded here, after attach_weights and before
fold_constants, in both the full-trace and the replicated path: no weight is read at build time and the two
paths give the same graph. Only a weight whose every use is a Cast to one float dtype is changed; the name
stays.
"""

from __future__ import annotations

import onnx_ir as ir

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def run(model: ir.Model) -> ir.Model:
    g = model.graph
    folded = 0
    for src in list(g.initializers.values()):
        uses = [u.node for u in src.uses()]
        if not uses or src.is_graph_output() or src.const_value is None or src.dtype not in _FLOATS:
            continue
        if any(n.op_type != "Cast" or n.domain not in ("", "ai.onnx") for n in uses):
            continue
        targets = {ir.DataType(n.attributes["to"].as_int()) for n in uses}
        if len(targets) != 1 or (to := targets.pop()) not in _FLOATS or to == src.dtype:
            continue
        old = src.const_value
        src.const_value = ir.LazyTensor(_cast(old, to, src.name), dtype=to, shape=old.shape, name=src.name)
        src.type = ir.TensorType(to)
        for node in uses:
            node.outputs[0].replace_all_uses_with(src)
            g.remove(node, safe=True)
        folded += 1
    model.meta["folded_casts"] = folded
    return model


def _cast(tensor: ir.TensorProtocol, to: ir.DataType, name: str):
    def load() -> ir.Tensor:
        return ir.Tensor(tensor.numpy().astype(to.numpy()), name=name)

    return load
