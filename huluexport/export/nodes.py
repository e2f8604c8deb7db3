"""A small helper for graphs written node by node with onnx.helper (the token-reduction graph, the runtime's
sampling graph): nodes and initializers collected under one name prefix, onnxruntime-genai style names."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# the graphs hulurt ships run on onnxruntime >= 1.18 (IR <= 9); opset 18 takes Reduce* axes as an input
RUNTIME_OPSET = 18
RUNTIME_IR_VERSION = 8


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

    def model(self, spec: Any, doc: str, opset: int = RUNTIME_OPSET) -> onnx.ModelProto:
        """The collected nodes as a checked model whose inputs/outputs are `spec`'s (a hulurt.contract.PieceSpec,
        graph named after it), for the graphs hulurt ships (huluexport/export/runtime_graphs.py)."""

        def info(t: Any) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                                 list(t.shape))

        graph = helper.make_graph(self.nodes, spec.name, [info(t) for t in spec.inputs],
                                  [info(t) for t in spec.outputs], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="huluexport")
        model.ir_version = RUNTIME_IR_VERSION
        model.doc_string = doc
        onnx.checker.check_model(model, full_check=True)
        return model

    def subgraph(self, name: str, outputs: list[tuple[str, int]]) -> onnx.GraphProto:
        """The collected nodes as a branch of an If: no inputs (it reads the enclosing graph's values by name),
        `outputs` (value, TensorProto type) scalars."""
        return helper.make_graph(self.nodes, name, [], [helper.make_tensor_value_info(v, t, []) for v, t in outputs],
                                 initializer=self.inits)

    def round_bf16(self, x: str, name: str) -> str:
        """float32 -> nearest bfloat16 (ties to even) -> float32."""
        b = self.op("Cast", [x], f"{name}/to_bf16", to=TensorProto.BFLOAT16)
        return self.op("Cast", [b], f"{name}/to_f32", to=TensorProto.FLOAT)
