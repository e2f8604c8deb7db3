"""The sampling graph hulurt ships (runtime/hulurt/graphs/sampler.onnx) is the one huluexport/export/sampler.py
writes today: regenerate it with `python -m huluexport.export.sampler runtime/hulurt/graphs/sampler.onnx` after
changing the builder or hulurt.contract.SAMPLER*. Its behaviour: tests/runtime/test_device_sampler.py."""

from __future__ import annotations

import hulurt
import onnx
from e2e.bundles import bundle
from hulurt import device_sample
from hulurt.contract import SAMPLER_CANDIDATES
from hulurt.sampling import SamplingConfig

from huluexport.export.sampler import sampler_model


def test_shipped_graph_is_the_builders() -> None:
    shipped = onnx.load(str(device_sample.GRAPH))
    built = sampler_model()
    assert shipped == built, "runtime/hulurt/graphs/sampler.onnx is stale: rerun python -m huluexport.export.sampler"
    onnx.checker.check_model(shipped, full_check=True)
    assert str(SAMPLER_CANDIDATES) in shipped.doc_string
    ops = {n.op_type for n in shipped.graph.node}
    assert "TopK" in ops and "CumSum" in ops and all(n.domain in ("", "ai.onnx") for n in shipped.graph.node)


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
