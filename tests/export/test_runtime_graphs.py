"""The small graphs hulurt ships (runtime/hulurt/graphs/*.onnx) are the ones huluexport/export/runtime_graphs.py
writes today: regenerate them with `python -m huluexport.export.runtime_graphs runtime/hulurt/graphs` after changing
a builder or hulurt.contract's SAMPLER* / gather_rows_spec. Their behaviour: tests/runtime/test_device_sampler.py
and test_device_rows.py."""

from __future__ import annotations

import hulurt
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from e2e.bundles import bundle
from hulurt import device_sample
from hulurt.contract import SAMPLER_CANDIDATES
from hulurt.device_rows import GRAPHS
from hulurt.sampling import SamplingConfig

from huluexport.export.runtime_graphs import gather_rows_model, runtime_graphs
from huluexport.export.sampler import sampler_model


def test_shipped_graphs_are_the_builders() -> None:
    built = runtime_graphs()
    shipped = sorted(p.name for p in GRAPHS.glob("*.onnx"))
    assert shipped == sorted(built), "runtime/hulurt/graphs differs from the builders' list"
    for name, model in built.items():
        on_disk = onnx.load(str(GRAPHS / name))
        assert on_disk == model, f"{name} is stale: rerun python -m huluexport.export.runtime_graphs"
        onnx.checker.check_model(on_disk, full_check=True)
        assert all(n.domain in ("", "ai.onnx") for n in on_disk.graph.node)
    sampler = onnx.load(str(device_sample.GRAPH))
    assert str(SAMPLER_CANDIDATES) in sampler.doc_string
    assert {"TopK", "CumSum"} <= {n.op_type for n in sampler.graph.node}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gather_rows_is_the_host_gather(dtype: str) -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 7, 24)).astype(dtype)
    keep = rng.random((5, 7)) > 0.4
    idx = np.flatnonzero(keep.reshape(-1)).astype(np.int64)
    sess = ort.InferenceSession(gather_rows_model(dtype).SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"rows": rows, "indices": idx})
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, rows.reshape(-1, 24)[keep.reshape(-1)])


def test_a_different_candidate_count_is_a_different_graph() -> None:
    """The equality above is not vacuous: the builder's parameters reach the graph."""
    assert sampler_model(candidates=8) != sampler_model()


def test_rows_past_the_candidates_fall_back_to_the_host(tmp_path, monkeypatch) -> None:
    """A graph with 4 candidates cannot answer top_k=8: every row goes to the host sampler with the uniform
    number the graph was given, so the tokens stay the host's."""
    small = tmp_path / "sampler4.onnx"
    onnx.save(sampler_model(candidates=4), str(small))
    monkeypatch.setattr(device_sample, "GRAPH", small)
    b = bundle("qwen2", gqa=True)
    host, dev = (hulurt.load(b, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static",
                             device_sampling=on) for on in (False, True))
    for cfg, fallback in ((SamplingConfig(greedy=False, temperature=1.3, top_k=8, seed=2), True),
                          (SamplingConfig(greedy=False, temperature=1.3, top_k=3, seed=2), False)):
        want = host.generate("Is the liver normal?", max_new_tokens=10, sampling=cfg, stop_ids=())
        got = dev.generate("Is the liver normal?", max_new_tokens=10, sampling=cfg, stop_ids=())
        assert got.token_ids == want.token_ids and len(set(got.token_ids)) > 3
        s = dev._gen(False).static_decoder()._sampler
        assert s.host_rows == (10 if fallback else 0)
        s.host_rows = 0
