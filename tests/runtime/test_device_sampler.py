"""The sampling graph (hulurt/graphs/sampler.onnx, hulurt.device_sample) against the host sampler
(hulurt.sampling.Sampler) on onnxruntime's CPU provider: the same token for the same uniform number, over the
candidates and over the whole row, `exact` false where a sum meets its threshold (hulurt.contract.SAMPLER_MARGIN),
and the runtime's gqa-static loop giving the same seeded tokens with sampling on the device or on the host (the
runtime's fallback to the host and a graph with few candidates: tests/export/test_runtime_graphs.py)."""

from __future__ import annotations

import zlib
from dataclasses import replace

import hulurt
import numpy as np
import onnxruntime as ort
import pytest
from e2e.bundles import bundle
from hulurt import device_sample
from hulurt.contract import SAMPLER, SAMPLER_CANDIDATES, SAMPLER_PARAMS
from hulurt.errors import HuluRuntimeError
from hulurt.sampling import Sampler, SamplingConfig

VOCAB = 152_064  # Qwen2.5's padded vocabulary


@pytest.fixture(scope="module")
def graph():
    return ort.InferenceSession(str(device_sample.GRAPH), providers=["CPUExecutionProvider"])


def run(graph, row: np.ndarray, cfg: SamplingConfig, u: float, seen: np.ndarray | None = None) -> tuple[int, bool]:
    ids = np.array([0], dtype=np.int64)
    penalty = 1.0
    if cfg.repetition_penalty != 1.0 and seen is not None and seen.size:
        ids, penalty = np.unique(seen).astype(np.int64), cfg.repetition_penalty
    values = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
              "repetition_penalty": penalty, "greedy": float(cfg.greedy), "uniform": u}
    params = np.array([values[n] for n in SAMPLER_PARAMS], dtype=np.float64)
    token, exact = graph.run(None, {"logits": row.reshape(1, -1).astype(np.float32), "seen_ids": ids,
                                    "params": params})
    assert token.shape == (1,) and token.dtype == np.int64 and exact.shape == (1,) and exact.dtype == bool
    return int(token[0]), bool(exact[0])


def peaked(rng: np.random.Generator, n: int = VOCAB) -> np.ndarray:
    """Logits falling off with log rank like a trained model's (the nucleus holds a few to a few hundred)."""
    return (-2.0 * np.log1p(rng.permutation(n)) + 0.3 * rng.standard_normal(n)).astype(np.float32)


def test_declared_io_is_the_contracts(graph) -> None:
    types = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(bool)": "bool"}
    for got, spec in ((graph.get_inputs(), SAMPLER.inputs), (graph.get_outputs(), SAMPLER.outputs)):
        assert [(a.name, types[a.type], tuple(a.shape)) for a in got] == [(s.name, s.dtype, s.shape) for s in spec]


EXACT = [
    ("temperature only (the whole row, in blocks)", dict(temperature=0.7)),
    ("top-p", dict(temperature=0.7, top_p=0.9)),
    ("top-k", dict(temperature=1.0, top_k=20)),
    ("top-k one below the candidate count", dict(temperature=1.3, top_k=SAMPLER_CANDIDATES - 1)),
    ("top-k + top-p + penalty", dict(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1)),
    ("wide top-p", dict(temperature=1.0, top_p=0.99)),
    ("tiny temperature", dict(temperature=1e-5, top_p=0.5)),
]


@pytest.mark.parametrize("what, kw", EXACT, ids=[e[0] for e in EXACT])
def test_same_token_as_the_host_sampler_for_the_same_draw(graph, what: str, kw: dict) -> None:
    rng = np.random.default_rng(zlib.crc32(what.encode()))
    cfg = SamplingConfig(greedy=False, **kw)
    host = Sampler(cfg)
    tokens = []
    for _ in range(12):
        row, seen, u = peaked(rng), rng.integers(0, VOCAB, 400), float(rng.random())
        token, exact = run(graph, row, cfg, u, seen)
        assert exact, f"{what}: the graph should know this row's answer"
        want = host(row, seen, u)
        assert token == want
        tokens.append(token)
    if cfg.temperature > 1e-3:  # not a trivial pass: the draws land on different tokens
        assert len(set(tokens)) > 3, tokens


def test_one_row_many_draws_walks_the_distribution(graph) -> None:
    """The same row with u spread over [0, 1): every draw equal to the host's, and tokens in the order of their
    ids' cumulative weight (the inverse CDF), over many different tokens."""
    rng = np.random.default_rng(3)
    row = peaked(rng)
    for cfg in (SamplingConfig(greedy=False, temperature=3.0, top_k=200),
                SamplingConfig(greedy=False, temperature=3.0)):
        host = Sampler(cfg)
        us = np.sort(rng.random(64))
        tokens = [run(graph, row, cfg, float(u))[0] for u in us]
        assert tokens == [host(row, np.empty(0, np.int64), float(u)) for u in us]
        assert tokens == sorted(tokens) and len(set(tokens)) > 20


def test_greedy_with_penalty_and_ties(graph) -> None:
    rng = np.random.default_rng(4)
    cfg = SamplingConfig(greedy=True, repetition_penalty=1.3)
    host = Sampler(cfg)
    for _ in range(8):
        row, seen = peaked(rng) + 10.0, rng.integers(0, VOCAB, 50)  # best logits positive: divided by 1.3
        seen[0] = int(np.argmax(row))  # the best token was said already: the penalty moves the answer
        token, exact = run(graph, row, cfg, 0.0, seen)
        assert exact and token == host(row, seen) and token != seen[0]
    tie = np.zeros(1000, np.float32)
    tie[[17, 400, 999]] = 5.0  # numpy's argmax takes the first maximum; so does the graph
    assert run(graph, tie, SamplingConfig(), 0.0) == (17, True)


def test_top_k_keeps_ties_at_the_kth_value(graph) -> None:
    """Sampler keeps every token equal to the k-th best (np.partition rule); the graph does the same."""
    row = np.full(5000, -10.0, np.float32)
    row[[3, 50, 700, 701, 4000]] = [4.0, 3.0, 2.0, 2.0, 2.0]  # top_k=3 keeps 5 tokens (three tied at 2.0)
    cfg = SamplingConfig(greedy=False, temperature=1.0, top_k=3)
    host = Sampler(cfg)
    got = {run(graph, row, cfg, float(u))[0] for u in np.linspace(0.001, 0.999, 200)}
    assert got == {host(row, np.empty(0, np.int64), float(u)) for u in np.linspace(0.001, 0.999, 200)}
    assert got == {3, 50, 700, 701, 4000}


def test_nucleus_cut_inside_a_tie_group_keeps_the_smallest_ids(graph) -> None:
    """When the top-p cut falls among tokens of equal logits, Sampler keeps the tied tokens with the smallest ids;
    the graph decides that from the ids, not from the order TopK gave the ties."""
    row = np.full(30_000, -30.0, np.float32)
    best, tied = 20_000, np.array([29_000, 7, 15_000, 300, 12, 9_999, 21_000, 5, 28_000, 40])
    row[best], row[tied] = 5.0, 3.0  # masses before: 0, .425, .482, .540, .597, .655 (>= 0.6: dropped), ...
    cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.6)
    host = Sampler(cfg)
    us = np.linspace(0.0005, 0.9995, 300)
    got = [run(graph, row, cfg, float(u)) for u in us]
    assert got == [(host(row, np.empty(0, np.int64), float(u)), True) for u in us]
    assert {t for t, _ in got} == {best, 5, 7, 12, 40}


def test_fp16_logits_with_many_ties(graph) -> None:
    """A decoder in fp16 gives logits on the fp16 grid: among the best thousand many are equal. Same tokens."""
    rng = np.random.default_rng(10)
    for cfg in (SamplingConfig(greedy=False, temperature=0.8, top_p=0.9),
                SamplingConfig(greedy=False, temperature=1.0, top_k=40, top_p=0.95),
                SamplingConfig(greedy=True, repetition_penalty=1.2)):
        host = Sampler(cfg)
        for _ in range(10):
            logit = 18.0 - 1.5 * np.log1p(rng.permutation(VOCAB)) + 0.3 * rng.standard_normal(VOCAB)
            row = logit.astype(np.float16).astype(np.float32)
            assert np.unique(np.sort(row)[-200:]).size < 190  # ties among the best, as claimed
            seen, u = rng.integers(0, VOCAB, 200), float(rng.random())
            token, exact = run(graph, row, cfg, u, seen)
            assert exact and token == host(row, seen, u), cfg


def test_small_vocabulary_fits_the_candidates(graph) -> None:
    rng = np.random.default_rng(5)
    for cfg in (SamplingConfig(greedy=False, temperature=0.8, top_p=0.95),
                SamplingConfig(greedy=False, temperature=0.8, top_k=100)):
        host = Sampler(cfg)
        for _ in range(10):
            row, u = rng.standard_normal(300).astype(np.float32), float(rng.random())
            assert run(graph, row, cfg, u) == (host(row, np.empty(0, np.int64), u), True)


PAST = ["top-k at the candidate count", "top-k past the candidates + top-p", "flat nucleus",
        "ties across the border", "fp16 ties, wide nucleus", "nucleus cut inside a tie group past the border"]


@pytest.mark.parametrize("what", PAST)
def test_rows_past_the_candidates_take_the_whole_row_branch(graph, what: str) -> None:
    """Sets the 1,024 candidates cannot hold are sampled over the whole sorted row (the If branch), still exact
    and still the host's tokens."""
    rng = np.random.default_rng(zlib.crc32(what.encode()))
    if what == "top-k at the candidate count":  # the k-th value might recur past the candidates
        row, cfg = peaked(rng), SamplingConfig(greedy=False, temperature=3.0, top_k=SAMPLER_CANDIDATES)
    elif what == "top-k past the candidates + top-p":
        row, cfg = peaked(rng), SamplingConfig(greedy=False, temperature=2.0, top_k=5000, top_p=0.95)
    elif what == "flat nucleus":  # standard normal logits at T=1: the 0.9 nucleus holds ~80k tokens
        row, cfg = rng.standard_normal(VOCAB).astype(np.float32), SamplingConfig(greedy=False, top_p=0.9)
    elif what == "ties across the border":  # the k-th best value is shared by tokens on both sides of the border
        row = np.full(VOCAB, -5.0, np.float32)
        row[:10] = 3.0
        cfg = SamplingConfig(greedy=False, temperature=1.0, top_k=20)
    elif what == "fp16 ties, wide nucleus":
        row = (4.0 - 0.4 * np.log1p(rng.permutation(VOCAB))).astype(np.float16).astype(np.float32)
        cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.99)
    else:  # 3,000 tokens tie at the cut value, spread over the row: the kept ones are the smallest ids
        row = np.full(VOCAB, -40.0, np.float32)
        tied = rng.permutation(VOCAB)[:3000]
        row[tied[:500]], row[tied[500:]] = 2.0, 0.0  # masses before: 500 tokens of e^2, then 2,500 of e^0
        cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.9)
    host = Sampler(cfg)
    tokens = []
    for u in np.linspace(0.0005, 0.9995, 40):
        token, exact = run(graph, row, cfg, float(u))
        assert exact, f"{what}: the whole-row branch knows this answer"
        assert token == host(row, np.empty(0, np.int64), float(u))
        tokens.append(token)
    assert len(set(tokens)) > 20, tokens  # not a trivial pass: the draws spread over the kept tokens
    if what.startswith("nucleus cut"):
        kept = np.flatnonzero(row == 0.0)
        assert max(t for t in tokens if row[t] == 0.0) <= kept[1800]  # ~1,800 of the 2,500 tied tokens kept


def _two_way(n: int, n_best: int) -> np.ndarray:
    """n_best tokens tied at the top, the rest -inf: every probability 1/n_best, exact in float64 for powers of
    two, so cumulative masses land exactly on p or on a draw."""
    row = np.full(n, -np.inf, np.float32)
    row[np.random.default_rng(n_best).permutation(n)[:n_best]] = 1.5
    return row


BOUNDARY = [  # (what, row, sampling, u): each one decision exactly at its threshold
    ("top-p cut exactly at p", _two_way(5000, 4), SamplingConfig(greedy=False, top_p=0.5), 0.3),
    ("top-p cut exactly at p, past the candidates", _two_way(VOCAB, 2048), SamplingConfig(greedy=False, top_p=0.5),
     0.3),
    ("draw on a candidate's boundary", _two_way(5000, 4), SamplingConfig(greedy=False, top_k=4), 0.5),
    ("draw on a boundary, whole row", _two_way(VOCAB, 4), SamplingConfig(greedy=False, temperature=0.9), 0.25),
    ("draw on a boundary, past the candidates", _two_way(VOCAB, 2048), SamplingConfig(greedy=False, top_p=0.7),
     0.5),  # 1,434 tokens kept, the 717th ends at 0.5
    ("u = 0", _two_way(5000, 4), SamplingConfig(greedy=False, top_p=0.9), 0.0),
]


@pytest.mark.parametrize("what, row, cfg, u", BOUNDARY, ids=[b[0] for b in BOUNDARY])
def test_a_decision_on_its_threshold_is_left_to_the_host(graph, what: str, row, cfg, u: float) -> None:
    """Where a sum meets its threshold exactly, a sum taken in another order (the host's) may fall on the other
    side: the graph says it is not sure (SAMPLER_MARGIN), and nudged off the threshold it is."""
    assert run(graph, row, cfg, u)[1] is False
    nudged = replace(cfg, top_p=cfg.top_p + 1e-6) if what.startswith("top-p") else cfg
    token, exact = run(graph, row, nudged, u + 1e-6)
    assert exact and token == Sampler(nudged)(row, np.empty(0, np.int64), u + 1e-6)


@pytest.mark.parametrize("bad", ["nan", "+inf", "all -inf"])
def test_unhealthy_rows_are_left_to_the_host(graph, bad: str) -> None:
    row = peaked(np.random.default_rng(7), 2000)
    if bad == "all -inf":
        row[:] = -np.inf
    else:
        row[5] = np.nan if bad == "nan" else np.inf
    for cfg in (SamplingConfig(greedy=False, temperature=0.7, top_p=0.9), SamplingConfig(greedy=True,
                                                                                           repetition_penalty=1.2)):
        assert run(graph, row, cfg, 0.3, np.array([1, 2]))[1] is False
        with pytest.raises(HuluRuntimeError, match="not finite|no finite"):
            Sampler(cfg)(row, np.array([1, 2]), 0.3)  # what the runtime's fallback then says


def test_minus_inf_logits_are_never_drawn(graph) -> None:
    rng = np.random.default_rng(8)
    row = peaked(rng, 4096)
    row[rng.permutation(4096)[:3000]] = -np.inf
    alive = set(np.flatnonzero(np.isfinite(row)).tolist())
    for cfg in (SamplingConfig(greedy=False, temperature=2.0), SamplingConfig(greedy=False, top_p=0.999)):
        host = Sampler(cfg)
        for u in np.linspace(0.0005, 0.9995, 50):
            token, exact = run(graph, row, cfg, float(u))
            assert exact and token in alive and token == host(row, np.empty(0, np.int64), float(u))


def test_host_sampler_takes_the_given_draw() -> None:
    """Sampler(row, seen, u) with u from the sampler's own stream is the plain Sampler(row, seen)."""
    rng = np.random.default_rng(9)
    rows = [peaked(rng, 5000) for _ in range(10)]
    cfg = SamplingConfig(greedy=False, temperature=0.9, top_p=0.95, seed=11)
    a, b = Sampler(cfg), Sampler(cfg)
    assert [a(r, np.empty(0, np.int64)) for r in rows] == [b(r, np.empty(0, np.int64), b.uniform()) for r in rows]


# ---- the runtime: the gqa-static loop with the sampling graph ------------------------------------------------


@pytest.fixture(scope="module")
def gqa_bundle():
    return bundle("qwen2", gqa=True)


SEEDED = [
    SamplingConfig(greedy=False, temperature=1.5, top_k=50, seed=7),
    SamplingConfig(greedy=False, temperature=1.2, seed=3),
    SamplingConfig(greedy=False, temperature=0.9, top_p=0.9, repetition_penalty=1.2, seed=5),
    SamplingConfig(greedy=True, repetition_penalty=1.3),
]


def _load(b, **kw):
    return hulurt.load(b, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static", **kw)


def test_runtime_device_sampling_gives_the_hosts_tokens(gqa_bundle) -> None:
    host, dev = _load(gqa_bundle, device_sampling=False), _load(gqa_bundle, device_sampling=True)
    calls = 0
    for cfg in SEEDED:
        want = host.generate("What is shown?", max_new_tokens=12, sampling=cfg, stop_ids=())
        got = dev.generate("What is shown?", max_new_tokens=12, sampling=cfg, stop_ids=())
        assert got.token_ids == want.token_ids and len(set(got.token_ids)) > 4
        sampler = dev._gen(False).static_decoder()._sampler
        assert sampler.calls == calls + 12 and sampler.host_rows == 0  # every token drawn by the graph
        calls = sampler.calls
    assert host._gen(False).static_decoder()._sampler is None


def test_auto_samples_on_the_host_on_the_cpu_provider(gqa_bundle) -> None:
    model = _load(gqa_bundle)  # device_sampling=None: the decoder's device is the CPU
    model.generate("What is shown?", max_new_tokens=4, sampling=SEEDED[0], stop_ids=())
    assert model._gen(False).static_decoder()._sampler is None


def test_cli_sample_on_reaches_the_load() -> None:
    from hulurt.options import RUN_OPTIONS

    opt = next(o for o in RUN_OPTIONS if o.flags == ("--sample-on",))
    assert opt.to == "load" and opt.kwarg == "device_sampling"
    assert [opt.convert(v) for v in ("auto", "device", "host")] == [None, True, False]


def test_sampling_config_plain_greedy() -> None:
    assert SamplingConfig().plain_greedy
    assert not replace(SamplingConfig(), repetition_penalty=1.1).plain_greedy
    assert not SamplingConfig(greedy=False, temperature=0.5).plain_greedy
