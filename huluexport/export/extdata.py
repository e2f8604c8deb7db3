"""Write one graph's external data file tensor by tensor, as each tensor is made, instead of holding every tensor
in the ModelProto until `onnx.save_model` writes them (huluexport/export/quantize.py streams through this).

The layout is the one `onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
location=..., size_threshold=...)` writes (onnx.external_data_helper.convert_model_to_external_data and
write_external_data_tensors): tensors in the order given, back to back from offset 0, no padding; a tensor whose
`sys.getsizeof(raw_data)` is under the threshold stays inside the .onnx; the proto of a written one keeps only
`data_location: EXTERNAL` and the entries location, offset, length. tests/export/test_quantize_stream.py checks
the files byte for byte against onnx.save_model's.

Writes run on one background thread (file writes release the GIL) while the caller makes the next tensor; at
most one write is in flight, so the memory held is the tensor being written plus the one being made.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from huluexport import progress
from huluexport.errors import ExportError

# sys.getsizeof(bytes) = this + len: onnx compares getsizeof(raw_data) with size_threshold
_BYTES_HEAD = sys.getsizeof(b"")


def external(nbytes: int, threshold: int) -> bool:
    """Whether onnx.save_model moves a tensor of `nbytes` raw bytes to the external data file."""
    return _BYTES_HEAD + nbytes >= threshold


def as_bytes(arr: np.ndarray) -> memoryview:
    """The little-endian C-order bytes `onnx.numpy_helper.from_array` puts in raw_data, without copying when the
    array is already contiguous and little-endian."""
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    return memoryview(a).cast("B")


class DataWriter:
    """Appends tensors to `path` (named `location` in the protos). `step` (a progress phase in bytes) advances as
    each write ends. Use as a context manager; `close()` waits for the last write and closes the file."""

    def __init__(self, path: Path, location: str, threshold: int, step: progress.Phase | None = None) -> None:
        self.path, self.location, self.threshold = path, location, threshold
        self.step = step
        self.offset = 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="extdata")
        self._pending: Future[None] | None = None

    def __enter__(self) -> DataWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(wait=kind is None)

    def _write(self, buf: memoryview) -> None:
        self._f.write(buf)
        if self.step is not None:
            self.step.advance(buf.nbytes)

    def wait(self) -> None:
        """Block until the write in flight (if any) has ended; raises what it raised."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def put(self, t: onnx.TensorProto, data: np.ndarray | bytes, *, loaded: bool = False) -> None:
        """Give `t` (name, dims and data_type set, no data) the bytes of `data`: inline under the threshold, else
        queued for appending, `t` then referencing them. `loaded`: `t` had its data loaded from a file first
        (onnx.external_data_helper.load_external_data_for_tensor sets data_location DEFAULT, which stays set
        on a tensor kept inline)."""
        buf = memoryview(data).cast("B") if isinstance(data, bytes) else as_bytes(data)
        del t.external_data[:]
        if not external(buf.nbytes, self.threshold):
            t.raw_data = bytes(buf)
            if loaded:
                t.data_location = onnx.TensorProto.DEFAULT
            return
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", self.offset), ("length", buf.nbytes)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        self.offset += buf.nbytes
        self.wait()
        self._pending = self._pool.submit(self._write, buf)

    def close(self, wait: bool = True) -> None:
        try:
            if wait:
                self.wait()
            elif self._pending is not None:
                self._pending.cancel()
        finally:
            self._pool.shutdown(wait=True)
            self._f.close()


def read_weight(t: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """One initializer as a numpy array, read straight from its external data file (never stored in the proto:
    protobuf keeps the bytes of a loaded field in its arena until the whole model is freed)."""
    if not uses_external_data(t):
        return onnx.numpy_helper.to_array(t)
    info = ExternalDataInfo(t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    count = int(np.prod(t.dims))
    path = base_dir / info.location
    arr = np.fromfile(path, dtype=dtype, count=count, offset=info.offset or 0)
    if arr.size != count:
        raise ExportError(
            f"{path}: {t.name!r} needs {count} values at offset {info.offset}, the file ends first"
        )
    return arr.reshape(tuple(t.dims))


def copy_kept(t: onnx.TensorProto, base_dir: Path, writer: DataWriter) -> None:
    """A float initializer the rewrite keeps (norms, biases, tables), copied into the output as the whole-model
    save did: one read from the source file straight into the writer, never into the proto's arena."""
    if uses_external_data(t):
        writer.put(t, read_weight(t, base_dir), loaded=True)
    elif t.HasField("raw_data") and external(len(t.raw_data), writer.threshold):
        writer.put(t, t.raw_data)


def write_subgraph_tensors(graph: onnx.GraphProto, base_dir: Path, writer: DataWriter, top: bool = True) -> None:
    """After the main graph's initializers, onnx.save_model writes the subgraphs' initializers (in its
    _get_initializer_tensors order); a tensor attribute or subgraph initializer keeping external data would
    point into the source's file, so it is refused."""
    if not top:
        for t in graph.initializer:
            if uses_external_data(t):
                raise ExportError(f"subgraph initializer {t.name!r} keeps external data; this quantizer copies "
                                  "only the main graph's external initializers")
            if t.HasField("raw_data") and external(len(t.raw_data), writer.threshold):
                writer.put(t, t.raw_data)
    for node in graph.node:
        for a in node.attribute:
            for t in (*([a.t] if a.HasField("t") else []), *a.tensors):
                if uses_external_data(t):
                    raise ExportError(f"node {node.name!r}: attribute {a.name!r} keeps its tensor in external "
                                      "data; this quantizer copies only initializers' external data")
            for g in (*([a.g] if a.HasField("g") else []), *a.graphs):
                write_subgraph_tensors(g, base_dir, writer, top=False)
