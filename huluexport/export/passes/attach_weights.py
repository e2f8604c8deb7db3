"""Point every initializer at its weight source, lazily: one tensor is read (and cast) only when saved.

before: layers.0.mlp.up_proj.weight = <meta tensor, no data>
after:  layers.0.mlp.up_proj.weight = LazyTensor(read 'model.layers.0.mlp.up_proj.weight' -> cast fp16)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch

from huluexport.errors import ExportError

_NP = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16}
_TORCH = {np.float32: torch.float32, np.float16: torch.float16}


def run(model: ir.Model, source: Callable[..., torch.Tensor], name_map: Callable[[str], str]) -> ir.Model:
    """source(reference_name, dtype) -> torch tensor in that dtype (huluexport.export.pipeline.weight_source: the
    cast is its one copy), read one tensor at a time; name_map(initializer name) -> reference name."""
    for name, value in model.graph.initializers.items():
        if value.dtype not in _NP:  # int constants the exporter lifted: keep their values
            if value.const_value is None or _is_meta(value.const_value):
                raise ExportError(f"initializer {name!r} ({value.dtype}) has no data and no weight source")
            continue
        try:
            ref = name_map(name)
        except KeyError:
            if value.const_value is not None and not _is_meta(value.const_value):
                continue  # a constant the exporter made (e.g. a scalar), not a parameter
            raise ExportError(f"initializer {name!r} is not a model parameter and has no data") from None
        shape = tuple(int(d) for d in value.shape)
        value.const_value = ir.LazyTensor(
            _loader(source, ref, _NP[value.dtype], shape, name),
            dtype=value.dtype,
            shape=ir.Shape(shape),
            name=name,
        )
    return model


def _is_meta(t: object) -> bool:
    raw = getattr(t, "raw", None)
    return bool(getattr(raw, "is_meta", False))


def _loader(source: Callable[..., torch.Tensor], ref: str, dtype: type, shape: tuple[int, ...], name: str):
    def load() -> ir.Tensor:
        t = source(ref, _TORCH[dtype])
        if tuple(t.shape) != shape:
            raise ExportError(
                f"weight {ref!r} has shape {list(t.shape)}; the graph's {name!r} needs {list(shape)}"
            )
        return ir.Tensor(t.to(_TORCH[dtype]).contiguous().numpy(), name=name)

    return load
