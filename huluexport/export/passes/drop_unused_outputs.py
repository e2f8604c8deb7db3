"""Leave the unused optional outputs of a fused operator unnamed, as onnxruntime's own fusions do.

before: SkipSimplifiedLayerNormalization(x, skip, w) -> (y, mean_1, inv_std_1, sum)    mean_1, inv_std_1 unread
after:  SkipSimplifiedLayerNormalization(x, skip, w) -> (y, "", "", sum)

An empty name is ONNX's "this optional output is not requested": onnxruntime's CUDA kernel never writes
SkipSimplifiedLayerNormalization's mean and inverse std, so they must not look like values the graph has. The
sum (output 3) goes the same way where nothing reads it (the final norm).
"""

from __future__ import annotations

import onnx_ir as ir

# (domain, op) -> output indices that are optional
OPTIONAL_OUTPUTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): (1, 2, 3),
}


def run(model: ir.Model) -> ir.Model:
    dropped = 0
    for node in model.graph:
        for i in OPTIONAL_OUTPUTS.get((node.domain, node.op_type), ()):
            if i < len(node.outputs):
                v = node.outputs[i]
                if v.name and not v.uses() and not v.is_graph_output():
                    v.name = ""
                    dropped += 1
    model.meta["dropped_outputs"] = dropped
    return model
