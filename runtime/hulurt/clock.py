"""Wall time per stage of one request: `with clock("vision"): ...`.

Stages nest exclusively: time spent in an inner stage is not counted again in the one around it, so the stages
of a request add up to its wall time. The generation loop (hulurt.generate), the input builder
(hulurt.inputs) and `huluexport bench` all report through this one clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StageClock:
    """Accumulated exclusive seconds per stage name in `seconds`; `now` is the time source (seconds)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open stage: seconds spent in stages opened inside it

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = self._now()
        self._inner.append(0.0)
        try:
            yield
        finally:
            spent = self._now() - t0
            inner = self._inner.pop()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + spent - inner
            if self._inner:
                self._inner[-1] += spent

    def get(self, stage: str) -> float:
        return self.seconds.get(stage, 0.0)
