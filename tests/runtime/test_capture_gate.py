"""CUDA graph capture against the other threads' CUDA work (hulurt.capture_gate), and the decoder's way out of a
capture that fails in a run (hulurt.static_decode.StaticDecoder._run_decode_step), on the CPU provider: the
gate's ordering with real threads, and the gqa-static loop driven as on CUDA (gpu_graph_id 1) with a first
graph run that raises as a failed capture does. On a GPU: tests/gpu."""

from __future__ import annotations

import logging
import threading
import time

import hulurt
import pytest
from e2e.bundles import bundle
from hulurt.capture_gate import GATE, CaptureGate
from hulurt.static_decode import GRAPH_DECODE, StaticDecoder

WAIT_S = 0.3  # how long a thread that must be blocked is given to (wrongly) get through


def _start(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_shared_holders_run_together_and_a_capture_waits_for_them() -> None:
    gate = CaptureGate()
    both_in = threading.Barrier(3, timeout=10)
    release = threading.Event()
    order: list[str] = []

    def mask(name: str) -> None:
        with gate.shared():
            both_in.wait()  # two shared holders at once, or this times out
            release.wait(10)
            order.append(name)

    masks = [_start(lambda n=n: mask(n)) for n in ("mask1", "mask2")]
    both_in.wait()

    def capture() -> None:
        with gate.alone():
            order.append("capture")

    cap = _start(capture)
    cap.join(WAIT_S)
    assert cap.is_alive() and order == []  # the capture waits while masks run
    release.set()
    for t in (*masks, cap):
        t.join(10)
    assert sorted(order[:2]) == ["mask1", "mask2"] and order[2] == "capture"


def test_a_waiting_capture_goes_before_new_shared_holders() -> None:
    gate = CaptureGate()
    order: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def first() -> None:
        with gate.shared():
            first_in.set()
            release.wait(10)
            order.append("first mask")

    def capture() -> None:
        with gate.alone():
            order.append("capture")

    def later() -> None:
        with gate.shared():
            order.append("later mask")

    a = _start(first)
    first_in.wait(10)
    b = _start(capture)
    deadline = time.monotonic() + 10
    while not gate._waiting and time.monotonic() < deadline:  # the capture is queued
        time.sleep(0.001)
    c = _start(later)
    c.join(WAIT_S)
    assert c.is_alive() and order == []  # a new mask does not slip in ahead of the queued capture
    release.set()
    for t in (a, b, c):
        t.join(10)
    assert order == ["first mask", "capture", "later mask"]


@pytest.fixture(scope="module")
def gqa_bundle():
    return bundle("qwen2", gqa=True)


def _graph_mode(path) -> tuple[hulurt.Model, StaticDecoder]:
    """A Model whose gqa-static decoder runs as on CUDA with a graph (gpu_graph_id 1 on the steps)."""
    model = hulurt.load(path, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    gen = model._gen(False)
    gen._static = StaticDecoder(model.session("decoder"), model.session("embed"), model.facts.dims,
                                gen._static_args[0], cuda_graph=True)
    return model, gen._static


def test_the_free_memory_query_waits_for_a_capture() -> None:
    """hulurt.device_memory asks the CUDA runtime under the gate shared, so it never runs while another thread
    captures (here the real query, which answers None on a host without a GPU, once the gate is released)."""
    from hulurt import device_memory

    done: list[object] = []
    with GATE.alone():
        t = _start(lambda: done.append(device_memory.memory(0)))
        t.join(WAIT_S)
        assert t.is_alive() and done == []
    t.join(10)
    assert len(done) == 1


def test_a_threads_first_graph_step_waits_for_running_masks(gqa_bundle) -> None:
    model, static = _graph_mode(gqa_bundle)
    want = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False,
                       decoder_form="gqa-static").generate("Describe the heart.", max_new_tokens=6, stop_ids=())
    got: list[list[int]] = []
    with GATE.shared():  # a token-reduction mask of another request, running
        t = _start(lambda: got.append(model.generate("Describe the heart.", max_new_tokens=6,
                                                     stop_ids=()).token_ids))
        t.join(WAIT_S)
        assert t.is_alive() and static.steps == 0  # held at the first (capturing) step
    t.join(60)
    assert got == [want.token_ids] and static.steps == 5
    assert len(static._graph_threads) == 1 and threading.get_ident() not in static._graph_threads
    model.generate("What is shown?", max_new_tokens=3, stop_ids=())  # this thread's first graph run: captured
    assert threading.get_ident() in static._graph_threads
    held, done = threading.Event(), threading.Event()

    def mask() -> None:
        with GATE.shared():
            held.set()
            done.wait(30)

    m = _start(mask)
    held.wait(10)
    try:  # a thread whose graph is captured replays while a mask runs: no wait on the gate
        assert model.generate("What is shown?", max_new_tokens=3, stop_ids=()).token_ids
    finally:
        done.set()
        m.join(10)


class _CaptureFails:
    """The decoder's onnxruntime session, whose first run with gpu_graph_id 1 raises as onnxruntime does when a
    capture fails (the same exception type: onnxruntime's Fail)."""

    def __init__(self, sess) -> None:
        self.sess = sess
        self.raised = 0

    def run_with_iobinding(self, binding, run_options=None):
        if run_options is not None and not self.raised:
            try:
                graph_id = run_options.get_run_config_entry("gpu_graph_id")
            except RuntimeError:
                graph_id = None
            if graph_id == GRAPH_DECODE:
                self.raised += 1
                from onnxruntime.capi.onnxruntime_pybind11_state import Fail

                raise Fail("Graph capture did not complete (the failure a capture can meet on a GPU)")
        return self.sess.run_with_iobinding(binding, run_options)

    def __getattr__(self, name: str):
        return getattr(self.sess, name)


def test_a_failed_capture_reopens_the_decoder_and_decodes_without_the_graph(gqa_bundle, caplog) -> None:
    want = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    model, static = _graph_mode(gqa_bundle)
    decoder = model.session("decoder")
    failing = _CaptureFails(decoder.session)
    decoder._sess = failing
    with caplog.at_level(logging.WARNING, logger="hulurt.backends.ort"):
        for prompt, n in (("Describe the heart.", 10), ("Is the liver normal?", 7)):
            got = model.generate(prompt, max_new_tokens=n, stop_ids=()).token_ids
            assert got == want.generate(prompt, max_new_tokens=n, stop_ids=()).token_ids and len(set(got)) > 1
    assert failing.raised == 1 and decoder.session is not failing  # reopened once, on a real session
    assert not static.cuda_graph and not decoder.cuda_graph and not decoder.options.cuda_graph
    with pytest.raises(RuntimeError):
        static._run_step.get_run_config_entry("gpu_graph_id")  # no graph id on the steps any more
    assert static.steps == 9 + 6 and not static._graph_threads
    assert any("capture failed in the first decode step" in r.getMessage() and "Fail" in r.getMessage()
               for r in caplog.records)
