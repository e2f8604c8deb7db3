"""The inputs and outputs an ONNX file declares, read without its weights, checked against a bundle's manifest
(hulurt.manifest_limits.check_graph_io: the same check hulurt runs on its onnxruntime sessions at load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hulurt import manifest as rt
from hulurt.manifest_limits import check_graph_io

from huluexport.errors import ManifestError

IO = list[tuple[str, str, tuple[Any, ...]]]


def declared_io(path: Path) -> tuple[IO, IO]:
    """(name, numpy dtype name, shape) of the graph's inputs and outputs; shape axes are ints, names or None."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise ManifestError(f"{path}: cannot read this graph ({exc})") from None

    def conv(values: Any) -> IO:
        out = []
        for v in values:
            t = v.type.tensor_type
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            except (KeyError, ValueError):
                dtype = f"onnx elem_type {t.elem_type}"
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
            )
            out.append((v.name, dtype, shape))
        return out

    return conv(model.graph.input), conv(model.graph.output)


def check_graphs(m: rt.Manifest) -> None:
    """Every piece's graph declares the tensors the manifest's dims imply (ManifestError naming the field)."""
    for piece, entry in m.pieces.items():
        path = rt.inside(m.root, entry.file, "graph")
        check_graph_io(m, piece, *declared_io(path), where=entry.file)
