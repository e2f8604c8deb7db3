"""Drop the node metadata that records where on the building machine the traced code lives.

torch.onnx (dynamo) stores the Python stack of every traced op in `pkg.torch.onnx.stack_trace`: absolute source
paths of the build machine (`File "/home/me/huluexport/export/pieces.py", line 109, in forward`). A bundle is
shipped to other machines and must not carry them (docs/bundle.md), and with them two checkouts of the same commit
wrote different .onnx bytes. The module scopes (`pkg.torch.onnx.name_scopes`, `namespace`) stay: they name model
modules, not files, and passes/replicate_layers.py reads them.

before: node "node_linear_3" metadata {stack_trace: 'File "/work/.../pieces.py", line 109 ...', name_scopes: ...}
after:  node "node_linear_3" metadata {name_scopes: ...}
"""

from __future__ import annotations

import onnx_ir as ir

DROPPED = ("pkg.torch.onnx.stack_trace",)


def run(model: ir.Model) -> ir.Model:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in DROPPED:
            node.metadata_props.pop(key, None)
    for fn in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(fn):
            for key in DROPPED:
                node.metadata_props.pop(key, None)
    return model
