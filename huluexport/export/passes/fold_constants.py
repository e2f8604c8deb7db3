"""Fold the exporter's small constant subgraphs (shape/axes arithmetic) into constants; weights are untouched.

    before: Constant([2]) --Reshape(Constant([-1]))--> axes --ReduceMean(x, axes)     (TensorRT: axes unknown)
    after:  ReduceMean(x, axes=initializer [2])

onnxscript's optimizer with size limits: nodes whose inputs exceed `input_size_limit` elements are never
evaluated, so no weight is read (or materialised) here. No ONNX shape inference: it would serialise weights.
"""

from __future__ import annotations

import onnx_ir as ir
import onnxscript.optimizer


def run(model: ir.Model, input_size_limit: int = 1024, output_size_limit: int = 1024) -> ir.Model:
    onnxscript.optimizer.optimize(
        model,
        num_iterations=2,
        onnx_shape_inference=False,
        input_size_limit=input_size_limit,
        output_size_limit=output_size_limit,
    )
    return model
