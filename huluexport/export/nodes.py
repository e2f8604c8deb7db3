"""A small helper for graphs written node by node with onnx.helper (the token-reduction graph, the runtime's
sampling graph): nodes and initializers collected under one name prefix, onnxruntime-genai style names."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class NodeBuilder:
    """Collects nodes and initializers under one name prefix: `/prefix/name` nodes, `/prefix/name/output_0`
    values."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        full = f"{self.prefix}/{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def op(
        self, op_type: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs
    ) -> str:
        outs = outputs or [f"{self.prefix}/{name}/output_0"]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{self.prefix}/{name}", **attrs))
        return outs[0]

    def ops(self, op_type: str, inputs: list[str], name: str, n_out: int, **attrs) -> list[str]:
        """A node with `n_out` outputs (TopK: values and indices)."""
        outs = [f"{self.prefix}/{name}/output_{i}" for i in range(n_out)]
        self.op(op_type, inputs, name, outputs=outs, **attrs)
        return outs

    def round_bf16(self, x: str, name: str) -> str:
        """float32 -> nearest bfloat16 (ties to even) -> float32."""
        b = self.op("Cast", [x], f"{name}/to_bf16", to=TensorProto.BFLOAT16)
        return self.op("Cast", [b], f"{name}/to_f32", to=TensorProto.FLOAT)
