"""Admission: a bounded queue in front of a fixed number of generation slots. A request is admitted at once or
refused (429 with Retry-After); an admitted one waits for a slot in arrival order. The slot is held until the
generation thread has really stopped, not merely until the client left, so a cancelled generation never
overlaps the next one on the same slot."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from hulurt.serve.metrics import Metrics
from hulurt.serve.schemas import APIError


@dataclass(frozen=True)
class Limits:
    concurrency: int = 1  # generations at once (one loaded model; v1: a KV cache each; gqa-static: take turns)
    max_queue: int = 8  # requests allowed to wait for a slot beyond the running ones
    max_body_bytes: int = 256 * 2**20  # a whole request body (base64 uploads included)
    max_upload_bytes: int = 192 * 2**20  # one decoded upload
    max_volume_bytes: int = 2 * 2**30  # one decoded volume / unzipped series / decoded frames

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1; got {self.concurrency}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0; got {self.max_queue}")


class Admission:
    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self._slots = asyncio.Semaphore(limits.concurrency)
        self.admitted = 0  # waiting + running
        self.waiting = 0
        self._mean_s = 1.0  # moving average of a request's slot time, for Retry-After

    def retry_after(self) -> int:
        ahead = max(self.admitted - self.limits.concurrency + 1, 1)
        return max(1, math.ceil(self._mean_s * ahead / self.limits.concurrency))

    def admit(self) -> None:
        """Take a place in the queue now, or raise 429."""
        if self.admitted >= self.limits.concurrency + self.limits.max_queue:
            self.metrics.rejected.inc()
            wait = self.retry_after()
            raise APIError(
                429, f"the server is busy: {self.limits.concurrency} generation(s) running and {self.waiting} "
                f"request(s) queued (limit {self.limits.max_queue}); retry after {wait} s",
                type="rate_limit_error", code="queue_full", headers={"Retry-After": str(wait)},
            )
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a generation slot (the caller was admitted)."""
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.metrics.queue_wait.observe(loop.time() - t0)
        t1 = loop.time()
        self.metrics.running.inc()
        try:
            yield
        finally:
            self.metrics.running.dec()
            self._mean_s = 0.8 * self._mean_s + 0.2 * (loop.time() - t1)
            self._slots.release()
