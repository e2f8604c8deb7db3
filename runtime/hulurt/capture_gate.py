"""CUDA graph capture against the CUDA work of other threads.

onnxruntime's CUDA provider captures a graph with `cudaStreamBeginCapture(..., cudaStreamCaptureModeGlobal)`, once
per thread (its graphs live in per-thread state). While one thread captures, a CUDA call that may synchronise
(cudaMalloc, a synchronous cudaMemcpy, a launch on the legacy stream) from any other thread of the process is an
error and invalidates the capture. A request holds its Model's gqa-static decoder from its vision calls to its last
token (hulurt.static_decode.StaticDecoder.request), so the decoder's own work never meets a capture; what runs
outside that hold is the token-reduction mask of `prepare` on the GPU (hulurt.device_reduce), in whichever thread
prepares the next request (`hulurt serve --concurrency N`), and the free-memory query of hulurt.device_memory.
That work takes this gate shared, a capture takes it alone: a capture waits for running masks to finish, and masks
wait the few milliseconds a capture takes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CaptureGate:
    """A readers-writer gate: many `shared` holders at once, or one `alone` holder; a waiting `alone` goes before
    new `shared` holders (a capture is not starved by a stream of masks). Not reentrant: a thread holding it
    shared must not ask for it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0  # threads waiting to hold it alone

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._alone and self._shared == 0)
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


GATE = CaptureGate()  # one per process: a capture's global mode spans every thread and device of the process
