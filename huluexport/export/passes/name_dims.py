"""Give every graph input/output the contract's name, dtype and named dims (the exporter's own symbols go).

before: pixel_patches [s45, s56, s48, 588]   rope_cos [s96, 16]    (torch.export symbols)
after:  pixel_patches [n_frames, n_groups, merge_group, 588]   rope_cos [n_patches, 16]
"""

from __future__ import annotations

import onnx_ir as ir
from hulurt.contract import PieceSpec

from huluexport.errors import ExportError

_DTYPES = {
    "float32": ir.DataType.FLOAT,
    "float16": ir.DataType.FLOAT16,
    "int64": ir.DataType.INT64,
    "int32": ir.DataType.INT32,
    "bool": ir.DataType.BOOL,
}


def run(model: ir.Model, spec: PieceSpec) -> ir.Model:
    g = model.graph
    for role, values, specs in (("input", g.inputs, spec.inputs), ("output", g.outputs, spec.outputs)):
        if len(values) != len(specs):
            raise ExportError(
                f"{spec.name}: exported graph has {len(values)} {role}s {[v.name for v in values]}; the contract "
                f"declares {len(specs)} {[s.name for s in specs]}"
            )
        for value, ts in zip(values, specs):
            value.name = ts.name
            if value.dtype != _DTYPES[ts.dtype]:
                raise ExportError(
                    f"{spec.name}: graph {role} {ts.name!r} is {value.dtype}; the contract says {ts.dtype}"
                )
            shape = value.shape
            if shape is None or len(shape) != len(ts.shape):
                raise ExportError(
                    f"{spec.name}: graph {role} {ts.name!r} has shape {shape}; contract {ts.shape}"
                )
            for axis, (got, want) in enumerate(zip(shape, ts.shape)):
                if isinstance(want, int) and isinstance(got, int) and got != want:
                    raise ExportError(
                        f"{spec.name}: graph {role} {ts.name!r} axis {axis} is {got}; the contract says {want}"
                    )
                if isinstance(want, str) and isinstance(got, int):
                    raise ExportError(
                        f"{spec.name}: graph {role} {ts.name!r} axis {axis} was specialised to {got} by the "
                        f"exporter; the contract needs it dynamic ({want})"
                    )
            value.shape = ir.Shape(list(ts.shape))
    return model
