"""Export one piece to an onnx_ir model: sample inputs and dynamic axes come from the contract.

torch.onnx.export (dynamo) with optimize=False: the graph is taken as traced; weights may live on the meta
device (large models) and are attached later by passes/attach_weights.py.
"""

from __future__ import annotations

import logging
import time
import warnings

import onnx_ir as ir
import torch
from hulurt.contract import DERIVED_DIMS, PieceSpec, shape_of
from torch import nn
from torch.export import Dim

from huluexport.errors import ExportError

log = logging.getLogger(__name__)


class _NoTorchvisionNotice(logging.Filter):
    """torch.onnx's op registry warns once per torchvision op (nms, roi_align, ...) on every export when
    torchvision is absent; the exporter never uses those ops, so these four lines per piece are dropped. Only
    that message of that logger: every other warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
_QUIET = _NoTorchvisionNotice()

OPSET = 20
# Sizes of the tracing sample: every dynamic dim >= 2 (torch.export specialises 0 and 1), all different.
SAMPLE_SIZES = {
    "n_frames": 2, "n_groups": 3, "merge_group": 4, "seq_len": 5, "n_visual": 2, "past_len": 3, "kv_capacity": 16,
}
# Lower bounds of the exported dims (0 allowed where the contract allows empty tensors).
DIM_MIN = {"n_visual": 0, "past_len": 0}
_TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}


def sample_inputs(spec: PieceSpec, device: torch.device | str = "cpu", image_token_id: int = 0) -> tuple:
    out = []
    gen = torch.Generator().manual_seed(0)
    for ts in spec.inputs:
        shape = shape_of(ts, SAMPLE_SIZES)
        dt = _TORCH_DTYPES[ts.dtype]
        if dt in (torch.int64, torch.int32):
            t = torch.randint(0, 8, shape, generator=gen).to(dt)
            if ts.name == "input_ids":  # as many image ids as visual rows, so the sample is self-consistent
                t[0, : SAMPLE_SIZES["n_visual"]] = image_token_id
        else:
            t = torch.randn(shape, generator=gen).to(dt)
        out.append(t.to(device))
    return tuple(out)


def dynamic_shapes(spec: PieceSpec, arg_names: list[str]) -> dict:
    """Named torch Dims per contract dim; derived dims (n_patches, total_len) are left to the exporter."""
    dims: dict[str, Dim] = {}

    def axes(ts) -> dict:
        out = {}
        for axis, d in enumerate(ts.shape):
            if isinstance(d, int):
                continue
            if d in DERIVED_DIMS:
                out[axis] = Dim.AUTO
            else:
                dims.setdefault(d, Dim(d, min=DIM_MIN.get(d, 1)))
                out[axis] = dims[d]
        return out

    specs = list(spec.inputs)
    ds: dict = {}
    positional = [n for n in arg_names if n != "past"]
    for name, ts in zip(positional, specs):
        ds[name] = axes(ts)
    if "past" in arg_names:
        ds["past"] = tuple(axes(ts) for ts in specs[len(positional) :])
    return ds


def export_graph(
    module: nn.Module, spec: PieceSpec, image_token_id: int = 0, translations: dict | None = None
) -> ir.Model:
    """Trace `module` (whose forward is the contract of `spec`) into an onnx_ir model (weights as traced).
    `translations`: torch custom op -> onnxscript function (export/gqa.py's GroupQueryAttention)."""
    device = next(iter(module.parameters())).device
    args = sample_inputs(spec, device, image_token_id)
    arg_names = ["past" if n.startswith("past_key_values.") else n for n in (t.name for t in spec.inputs)]
    arg_names = list(dict.fromkeys(arg_names))
    t0 = time.perf_counter()
    registry_log = logging.getLogger(_REGISTRY_LOGGER)
    if _QUIET not in registry_log.filters:
        registry_log.addFilter(_QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                module,
                args,
                dynamic_shapes=dynamic_shapes(spec, arg_names),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=OPSET,
                custom_translation_table=translations,
                dynamo=True,
                optimize=False,
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"{spec.name}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    log.info("export %s: traced in %.1f s", spec.name, time.perf_counter() - t0)
    return prog.model
