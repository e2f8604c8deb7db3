"""The visual rows of a request assembled on the decoder's device: each vision call's output stays where the
vision graph ran, the kept merged tokens are gathered there (hulurt/graphs/gather_rows_<dtype>.onnx) straight into
one buffer of the request's rows, and the gqa-static prefill binds slices of that buffer as the embed graph's
`visual_embeds`. Without it, a 160-slice CT's vision output (about 0.37 GB in fp16 at 7B width) comes to the host
for the gather and the kept rows go back for the embed graph.

Exact: the same Gather of the same rows the host does (hulurt.reduction.kept_rows), so prompts and answers do not
change (tests/runtime/test_device_rows.py on the CPU provider, tests/gpu on CUDA). The graph files are written by
huluexport/export/runtime_graphs.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.backends.base import BackendOptions
from hulurt.contract import gather_rows_spec
from hulurt.errors import ContractError

log = logging.getLogger(__name__)

GRAPHS = Path(__file__).resolve().parent / "graphs"


def graph_path(act_dtype: str) -> Path:
    return GRAPHS / f"{gather_rows_spec(act_dtype).name}.onnx"


@dataclass(frozen=True)
class RowSlice:
    """Rows [start, stop) of a RowsOnDevice, for binding as an input by pointer (no copy)."""

    ptr: int
    rows: int
    hidden: int
    dtype: np.dtype[Any]
    device: str
    device_id: int

    def bind(self, binding: Any, name: str) -> None:
        binding.bind_input(name, self.device, self.device_id, self.dtype.type, [self.rows, self.hidden], self.ptr)


@dataclass(frozen=True)
class RowsOnDevice:
    """A request's kept visual rows [n, hidden] in one buffer on the decoder's device (`value`, an OrtValue that
    keeps the memory alive)."""

    value: Any
    rows: int
    hidden: int
    dtype: np.dtype[Any]
    device: str
    device_id: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.hidden

    def slice(self, start: int, stop: int) -> RowSlice | None:
        """Rows [start, stop) as a RowSlice; None when empty (the caller binds its own zero-row array)."""
        if not 0 <= start <= stop <= self.rows:
            raise ContractError(f"visual rows [{start}, {stop}) asked of a buffer of {self.rows}")
        if stop == start:
            return None
        ptr = int(self.value.data_ptr()) + start * self.hidden * self.dtype.itemsize
        return RowSlice(ptr, stop - start, self.hidden, self.dtype, self.device, self.device_id)

    def numpy(self) -> NDArray[Any]:
        """A host copy (tests, and the v1 embed path)."""
        return np.asarray(self.value.numpy())[: self.rows]  # the buffer has one row at least


class DeviceRows:
    """Runs the vision graph with its output left on its device and gathers the kept rows into a request's
    buffer (see the module doc). `vision`: the vision OrtSession; its provider and device are used."""

    def __init__(self, vision: Any, act_dtype: str, hidden: int) -> None:
        from hulurt.backends.ort import OrtSession

        self.vision = vision
        options: BackendOptions = vision.options
        self.gather = OrtSession(graph_path(act_dtype), replace(options, cuda_graph=False, release_after_run=False))
        self.device, self.device_id = vision.device_type, options.device_id
        self.dtype = np.dtype(act_dtype)
        self.hidden = hidden
        log.info("visual rows gathered on %s (%s)", self.device, graph_path(act_dtype).name)

    def assemble(self, calls: Iterable[tuple[dict[str, NDArray[Any]], NDArray[np.int64] | None]], total: int
                 ) -> RowsOnDevice:
        """`calls`: per vision call, its feeds and the flat indices of its kept merged tokens (None: all of
        them), in token order; `total`: the rows they keep together. -> the rows, in one buffer on the device."""
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_shape_and_type([max(total, 1), self.hidden], self.dtype, self.device,
                                                          self.device_id)
        base, row_bytes = int(value.data_ptr()), self.hidden * self.dtype.itemsize
        at = 0
        for feeds, kept in calls:
            _, dev = self.vision.run_bound(feeds, ("visual_embeds",))
            out = dev["visual_embeds"]  # [frames, groups, hidden] on the device
            frames, groups, hidden = (int(x) for x in out.shape())
            if hidden != self.hidden:
                raise ContractError(f"vision output hidden size {hidden}; the bundle's is {self.hidden}")
            idx = np.arange(frames * groups, dtype=np.int64) if kept is None else kept
            n = int(idx.shape[0])
            if at + n > total:
                raise ContractError(f"vision calls keep more than the {total} visual rows planned")
            if n:
                b = self.gather.session.io_binding()
                b.bind_ortvalue_input("rows", out)
                b.bind_cpu_input("indices", np.ascontiguousarray(idx, dtype=np.int64))
                b.bind_output("kept", self.device, self.device_id, self.dtype.type, [n, self.hidden],
                              base + at * row_bytes)
                self.gather.session.run_with_iobinding(b)
            at += n
            del out, dev  # one call's vision output alive at a time
        if at != total:
            raise ContractError(f"vision calls kept {at} visual rows; {total} were planned")
        return RowsOnDevice(value, total, self.hidden, self.dtype, self.device, self.device_id)
