"""A Session that checks every call against the contract: the feeds before the graph runs (names, dtypes,
ranks, static dims, the bundle's dim ranges) and the outputs after it, and remembers every size each named dim
took. `huluexport verify` runs bundles through it; it costs a few microseconds per call."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hulurt.backends.base import Session
from hulurt.contract import DimRange, PieceSpec, assert_conforms, bind


class CheckedSession:
    def __init__(self, inner: Session, spec: PieceSpec, ranges: Mapping[str, DimRange] | None = None) -> None:
        self.inner = inner
        self.spec = spec
        self.ranges = dict(ranges or {})
        self.path: Path = inner.path
        self.provider: str = inner.provider
        self.seen: dict[str, set[int]] = {}  # named dim -> every size it took

    def input_names(self) -> list[str]:
        return self.inner.input_names()

    def output_names(self) -> list[str]:
        return self.inner.output_names()

    def run(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        where = str(self.path)
        sizes = bind(self.spec, feeds, self.ranges, where=where)
        outs = self.inner.run(feeds)
        sizes = assert_conforms(self.spec, outs, sizes, where=where)
        for name, size in sizes.items():
            self.seen.setdefault(name, set()).add(size)
        return outs
