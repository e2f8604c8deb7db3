"""The small graphs hulurt ships with itself (runtime/hulurt/graphs/; no weights, one file serves every model):
the sampling graph (huluexport/export/sampler.py) and the row-gather graphs, one per activation dtype
(hulurt.contract.gather_rows_spec). tests/export/test_runtime_graphs.py holds the shipped files equal to these.

    python -m huluexport.export.runtime_graphs runtime/hulurt/graphs   # rewrite them after changing a builder
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from hulurt.contract import GATHER_ROWS_DTYPES, gather_rows_spec

from huluexport.export.nodes import NodeBuilder
from huluexport.export.sampler import sampler_model


def gather_rows_model(act_dtype: str) -> onnx.ModelProto:
    """rows [T, G, H] -> Reshape [T * G, H] -> Gather(indices) -> kept [n_kept, H]: the kept merged tokens of one
    vision call in token order (hulurt.reduction.kept_rows), on whatever device the rows are."""
    spec = gather_rows_spec(act_dtype)
    g = NodeBuilder("/gather_rows")
    hidden = g.op("Shape", ["rows"], "hidden", start=2, end=3)  # [1]
    flat_shape = g.op("Concat", [g.const("minus1", np.array([-1], dtype=np.int64)), hidden], "flat_shape", axis=0)
    flat = g.op("Reshape", ["rows", flat_shape], "flat")
    g.op("Gather", [flat, "indices"], "kept", outputs=["kept"], axis=0)

    return g.model(spec, f"hulurt row gather ({act_dtype}): the kept visual rows of one vision call")


def runtime_graphs() -> dict[str, onnx.ModelProto]:
    """File name -> graph, every graph hulurt ships."""
    graphs = {"sampler.onnx": sampler_model()}
    for dtype in GATHER_ROWS_DTYPES:
        graphs[f"{gather_rows_spec(dtype).name}.onnx"] = gather_rows_model(dtype)
    return graphs


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m huluexport.export.runtime_graphs DIR   (runtime/hulurt/graphs)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, model in runtime_graphs().items():
        tmp = out / f"{name}.tmp"
        onnx.save(model, str(tmp))
        tmp.replace(out / name)
        print(f"wrote {out / name} ({(out / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
