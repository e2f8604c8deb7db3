"""The small graphs hulurt ships (runtime/hulurt/graphs/*.onnx) are the ones huluexport/export/runtime_graphs.py
writes today: regenerate them with `python -m huluexport.export.runtime_graphs runtime/hulurt/graphs` after changing
a builder or hulurt.contract's SAMPLER* / gather_rows_spec. Their behaviour: tests/runtime/test_device_sampler.py
and test_device_rows.py."""

from __future__ import annotations

from dataclasses import replace

import hulurt
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from e2e.bundles import bundle
from hulurt import device_sample
from hulurt.contract import SAMPLER_CANDIDATES, SAMPLER_PARAMS
from hulurt.device_rows import GRAPHS
from hulurt.sampling import Sampler, SamplingConfig

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


def test_few_candidates_sample_the_whole_row_like_the_host() -> None:
    """With 16 candidates nearly every top-k / top-p set reaches past them, so the whole-row branch decides: over
    random rows (fp16 ties among them) and settings it gives the host's token for every draw it calls exact, and
    it calls nearly all of them exact."""
    graph = ort.InferenceSession(sampler_model(candidates=16).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(21)
    exact_n, tokens = 0, set()
    for i in range(120):
        n = int(rng.integers(40, 5000))
        row = (rng.standard_normal(n) * rng.uniform(0.5, 4.0)).astype(np.float32)
        if i % 3 == 0:
            row = row.astype(np.float16).astype(np.float32)  # ties
        cfg = SamplingConfig(greedy=False, temperature=float(rng.uniform(0.3, 2.0)),
                             top_k=int(rng.choice([0, 0, 17, 64, 900])), top_p=float(rng.choice([1.0, 0.5, 0.9, 0.99])))
        if cfg.top_k == 0 and cfg.top_p == 1.0:
            cfg = replace(cfg, top_p=0.8)
        u = float(rng.random())
        params = np.array([{"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                            "repetition_penalty": 1.0, "greedy": 0.0, "uniform": u}[k] for k in SAMPLER_PARAMS])
        token, exact = graph.run(None, {"logits": row[None], "seen_ids": np.zeros(1, np.int64), "params": params})
        if exact[0]:
            exact_n += 1
            assert int(token[0]) == Sampler(cfg)(row, np.empty(0, np.int64), u), (i, cfg)
            tokens.add(int(token[0]))
    assert exact_n >= 118 and len(tokens) > 60


def test_rows_the_graph_is_not_sure_of_fall_back_to_the_host(tmp_path, monkeypatch) -> None:
    """In the runtime: a graph with 4 candidates answers top_k=8 over the whole row (no row on the host); a graph
    whose margin is 1 is sure of no draw, so every sampled row goes to the host sampler with the uniform number
    the graph was given. The tokens are the host's either way."""
    b = bundle("qwen2", gqa=True)
    host = hulurt.load(b, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static",
                       device_sampling=False)
    for graph, fallback in ((sampler_model(candidates=4), False), (sampler_model(margin=1.0), True)):
        path = tmp_path / f"sampler_{int(fallback)}.onnx"
        onnx.save(graph, str(path))
        monkeypatch.setattr(device_sample, "GRAPH", path)
        dev = hulurt.load(b, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static",
                          device_sampling=True)
        for cfg in (SamplingConfig(greedy=False, temperature=1.3, top_k=8, seed=2),
                    SamplingConfig(greedy=False, temperature=1.1, top_p=0.9, seed=4)):
            want = host.generate("Is the liver normal?", max_new_tokens=10, sampling=cfg, stop_ids=())
            got = dev.generate("Is the liver normal?", max_new_tokens=10, sampling=cfg, stop_ids=())
            assert got.token_ids == want.token_ids and len(set(got.token_ids)) > 3
            s = dev._gen(False).static_decoder()._sampler
            assert s.host_rows == (10 if fallback else 0)
            s.host_rows = 0
