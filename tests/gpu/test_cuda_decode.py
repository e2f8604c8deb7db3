"""The CUDA path of hulurt (onnxruntime-gpu): the gqa-static decoder form with KV buffers on the device written
in place, fixed step buffers, device argmax, sampling and visual rows on the device and a captured CUDA graph,
on fp16 bundles (onnxruntime's CUDA GroupQueryAttention kernels are fp16/bf16 only); fp32 bundles take v1 on
CUDA. Tokens are compared with the same graph on the CPU provider by the greedy check of `huluexport bench`
(identical, or a first divergence that is a near tie of the two providers' fp16 rounding), and exactly between
CUDA runs with and without the graph, between sampling on the device and on the host, and between visual rows
gathered on the device and on the host.

Skipped, with the reason, without a CUDA device (tests/conftest.py) or without onnxruntime's CUDA provider;
run on a GPU machine by scripts/gpu_bench.sh (docs/gpu.md).
"""

from __future__ import annotations

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.sampling import SamplingConfig

from huluexport.bench.greedy_check import greedy_check
from huluexport.tolerances import get as tolerance

pytestmark = pytest.mark.gpu

PROMPTS = (("Describe the heart.", 16), ("Is the liver normal? Answer briefly.", 12))


@pytest.fixture(scope="module", autouse=True)
def _cuda_provider() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")


def _trace(model, prompt: str, n: int) -> tuple[list[int], list[np.ndarray]]:
    rows: list[np.ndarray] = []
    g = model.generate(prompt, max_new_tokens=n, stop_ids=(), on_logits=lambda r: rows.append(np.array(r)))
    return list(g.token_ids), rows


def _agree(gpu, cpu, prompt: str, n: int) -> None:
    """Same greedy tokens, or a first divergence that the two providers' numeric difference explains."""
    got, want = _trace(gpu, prompt, n), _trace(cpu, prompt, n)
    check = greedy_check(*got, *want)
    assert check["first_divergence"] is None or check["divergence"]["near_tie"], check["summary"]


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_cuda_runs_gqa_fp16_with_a_graph_and_matches_cpu(kind: str) -> None:
    path = bundle(kind, gqa=True, precision="fp16")
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False, decoder_form="gqa-static")
    gpu = hulurt.load(path, provider="cuda", verify_hashes=False)
    assert gpu.decoder_piece == "decoder_gqa" and gpu.provider == "cuda"
    assert gpu.uses_cuda_graph  # every node on the CUDA provider, or onnxruntime would have refused the graph
    for prompt, n in PROMPTS * 2:  # the second round replays the graph captured in the first
        _agree(gpu, cpu, prompt, n)
        plain = gpu.generate(prompt, max_new_tokens=n, stop_ids=())  # device argmax, only the token to the host
        assert plain.token_ids == _trace(gpu, prompt, n)[0]
    static = gpu._gen(False).static_decoder()
    assert static.cuda_graph and static.device == "cuda"
    assert all(buf.device_name().lower() == "cuda" for buf in static.kv)
    assert static.steps >= 2 * sum(n - 1 for _, n in PROMPTS)


def test_chunked_prefill_continues_the_device_cache() -> None:
    """A prompt fed in chunks (hulurt's prefill schedule): each chunk after the first is GroupQueryAttention with
    cached rows and several new ones (onnxruntime's "subsequent prompt"), on the CUDA provider, written in place.
    Same tokens as one chunk on CUDA and as the same chunks on the CPU provider, or a near tie."""
    path = bundle("qwen2", gqa=True, precision="fp16")
    chunked = hulurt.load(path, provider="cuda", verify_hashes=False, prefill_chunk=5)
    whole = hulurt.load(path, provider="cuda", verify_hashes=False, prefill_chunk=10**6)
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False, decoder_form="gqa-static", prefill_chunk=5)
    for prompt, n in PROMPTS:
        t = chunked.generate(prompt, max_new_tokens=1, stop_ids=()).timings
        assert t.prefill_chunk == 5 and t.prompt_tokens > 2 * 5, t  # three chunks at least
        got = _trace(chunked, prompt, n)
        for other in (whole, cpu):
            check = greedy_check(*got, *_trace(other, prompt, n))
            assert check["first_divergence"] is None or check["divergence"]["near_tie"], check["summary"]


def test_default_split_budgets_against_the_gpu_memory() -> None:
    """On CUDA the default vision batch and prefill chunk are sized by the GPU's free memory (hulurt.device_memory:
    cudaMemGetInfo of the CUDA runtime onnxruntime loaded), where their activations live, not by the host's."""
    import torch
    from hulurt import device_memory, schedule

    gpu = hulurt.load(bundle("qwen2", gqa=True, precision="fp16"), provider="cuda", verify_hashes=False)
    gpu.generate("Describe the heart.", max_new_tokens=2, stop_ids=())  # the sessions have run: their memory is held
    slack = 64 << 20  # nothing else allocates between the readings; the margin only covers allocator rounding
    free0, total = torch.cuda.mem_get_info(0)
    got = device_memory.memory(0)
    free1, _ = torch.cuda.mem_get_info(0)
    assert got is not None and got[1] == total, (got, total)
    assert min(free0, free1) - slack <= got[0] <= max(free0, free1) + slack, (got, free0, free1)
    gen = gpu._gen(True)
    for piece in ("vision", "decoder"):
        assert abs(gen.budget_for(piece) - schedule.BUDGET_FRACTION * got[0]) <= slack, piece
    assert not gen._budget_warned


def test_kv_capacity_on_the_device() -> None:
    """kv_capacity sizes the device KV buffers (after the free-memory check, hulurt.static_decode.check_kv_room);
    the captured decode step over the smaller buffers gives the full capacity's tokens."""
    path = bundle("qwen2", gqa=True, precision="fp16")
    small = hulurt.load(path, provider="cuda", verify_hashes=False, kv_capacity=64)
    full = hulurt.load(path, provider="cuda", verify_hashes=False)
    a = small.generate("Describe the heart.", max_new_tokens=16, stop_ids=()).token_ids
    assert a == full.generate("Describe the heart.", max_new_tokens=16, stop_ids=()).token_ids
    static = small._gen(False).static_decoder()
    assert static.capacity == 64 and static.cuda_graph
    assert all(b.shape()[2] == 64 and b.device_name().lower() == "cuda" for b in static.kv)


def test_int4_gqa_runs_on_cuda_with_a_graph(tmp_path) -> None:
    """A weight-only int4 bundle (`huluexport quantize`: MatMulNBits in both decoder forms) runs its gqa-static form
    on CUDA with a captured graph, onnxruntime's CUDA MatMulNBits in place of the fp16 MatMuls. Compared with the
    same graph on the CPU provider quantized at accuracy_level 0 (fp16 matmul inputs, as the CUDA kernel takes
    them; level 4 would quantize them to int8 on the CPU only)."""
    from huluexport.export.quantize import quantize_bundle

    q = quantize_bundle(bundle("qwen2", gqa=True, precision="fp16"), tmp_path / "int4", bits=4, accuracy_level=0)
    gpu = hulurt.load(q, provider="cuda", verify_hashes=False)
    cpu = hulurt.load(q, provider="cpu", verify_hashes=False, decoder_form="gqa-static")
    assert gpu.decoder_piece == "decoder_gqa" and gpu.uses_cuda_graph
    for prompt, n in PROMPTS * 2:  # the second round replays the captured graph
        _agree(gpu, cpu, prompt, n)


def test_cuda_keeps_fp32_bundles_on_v1() -> None:
    """No fp32 GroupQueryAttention on CUDA: an fp32 bundle decodes with v1 there, and agrees with the CPU."""
    path = bundle("qwen2", gqa=True)
    gpu = hulurt.load(path, provider="cuda", verify_hashes=False)
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False)
    assert gpu.decoder_piece == cpu.decoder_piece == "decoder" and not gpu.uses_cuda_graph
    opened = gpu.session("decoder")._sess.get_provider_options()["CUDAExecutionProvider"]  # type: ignore[attr-defined]
    assert opened["use_tf32"] == "0"  # fp32 matmuls in fp32, not TF32 (backends/ort.py)
    for prompt, n in PROMPTS:
        _agree(gpu, cpu, prompt, n)


def test_graph_and_no_graph_and_sampling_agree() -> None:
    """With and without the captured graph the CUDA runs are the same kernels on the same shapes (the step binds
    total_sequence_length at the capacity either way): identical tokens, greedy and seeded sampling."""
    path = bundle("qwen2", gqa=True, precision="fp16")
    graph = hulurt.load(path, provider="cuda", verify_hashes=False)
    plain = hulurt.load(path, provider="cuda", verify_hashes=False, cuda_graph=False)
    assert graph.uses_cuda_graph and not plain.uses_cuda_graph
    ptrs = [b.data_ptr() for b in graph._gen(False).static_decoder().kv]
    a = graph.generate("What is shown?", max_new_tokens=20, stop_ids=()).token_ids
    b = plain.generate("What is shown?", max_new_tokens=20, stop_ids=()).token_ids
    assert a == b and len(set(a)) > 1
    assert [b.data_ptr() for b in graph._gen(False).static_decoder().kv] == ptrs  # never reallocated
    s = SamplingConfig(greedy=False, temperature=1.3, top_k=40, seed=3)  # drawn on the device (device_sample)
    assert graph.generate("What is shown?", max_new_tokens=12, sampling=s, stop_ids=()).token_ids == \
        plain.generate("What is shown?", max_new_tokens=12, sampling=s, stop_ids=()).token_ids


SAMPLED = (
    SamplingConfig(greedy=False, temperature=1.3, top_k=40, seed=3),
    SamplingConfig(greedy=False, temperature=0.8, top_p=0.9, seed=4),
    SamplingConfig(greedy=False, temperature=1.1, repetition_penalty=1.2, seed=5),
    SamplingConfig(greedy=True, repetition_penalty=1.3),
)


def test_device_sampling_equals_host_sampling_on_cuda() -> None:
    """The sampling graph on the CUDA provider, reading the decoder's logits buffer in place (the default on
    CUDA), draws the host sampler's tokens for the same seed; no row is left to the host."""
    path = bundle("qwen2", gqa=True, precision="fp16")
    dev = hulurt.load(path, provider="cuda", verify_hashes=False)
    host = hulurt.load(path, provider="cuda", verify_hashes=False, device_sampling=False)
    for cfg in SAMPLED:
        a = dev.generate("What is shown?", max_new_tokens=12, sampling=cfg, stop_ids=()).token_ids
        b = host.generate("What is shown?", max_new_tokens=12, sampling=cfg, stop_ids=()).token_ids
        assert a == b and len(set(a)) > 3, cfg
    sampler = dev._gen(False).static_decoder()._sampler
    assert sampler is not None and sampler.session.provider == "cuda"
    assert sampler.calls == 12 * len(SAMPLED) and sampler.host_rows == 0
    assert host._gen(False).static_decoder()._sampler is None


def test_sampling_graph_on_cuda_equals_the_host_rule_at_full_vocabulary() -> None:
    """hulurt/graphs/sampler.onnx on the CUDA provider over 152,064-logit rows: the token of hulurt.sampling for
    the same uniform number, for each path of the graph (whole row in blocks, top-k, top-p, both + penalty, and the
    whole-row branch: a nucleus of ~80k tokens on flat rows, top-k past the 1,024 candidates)."""
    import onnxruntime as ort
    from hulurt import device_sample
    from hulurt.contract import SAMPLER_PARAMS
    from hulurt.sampling import Sampler

    sess = ort.InferenceSession(str(device_sample.GRAPH), providers=["CUDAExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    rng = np.random.default_rng(0)
    configs = ((SamplingConfig(greedy=False, temperature=0.7), False),
               (SamplingConfig(greedy=False, temperature=1.0, top_k=50), False),
               (SamplingConfig(greedy=False, temperature=0.7, top_p=0.9), False),
               (SamplingConfig(greedy=False, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1), False),
               (SamplingConfig(greedy=False, temperature=1.0, top_p=0.9), True),
               (SamplingConfig(greedy=False, temperature=2.0, top_k=5000, top_p=0.99), False))
    for cfg, flat in configs:
        tokens = []
        for _ in range(16):
            row = (rng.standard_normal(152_064) if flat else
                   -2.0 * np.log1p(rng.permutation(152_064)) + 0.3 * rng.standard_normal(152_064)).astype(np.float32)
            seen = np.unique(rng.integers(0, 152_064, 300))
            u = float(rng.random())
            values = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                      "repetition_penalty": cfg.repetition_penalty, "greedy": 0.0, "uniform": u}
            params = np.array([values[n] for n in SAMPLER_PARAMS], dtype=np.float64)
            token, exact = sess.run(None, {"logits": row[None], "seen_ids": seen, "params": params})
            assert bool(exact[0]) and int(token[0]) == Sampler(cfg)(row, seen, u), cfg
            tokens.append(int(token[0]))
        assert len(set(tokens)) > 3, cfg


def test_visual_rows_stay_on_the_device_and_equal_the_host_gather() -> None:
    """hulurt.device_rows on CUDA (the default there): the vision output of each call is gathered on the device
    into the request's row buffer, bit-equal to the host gather of the same CUDA vision output, and the answer is
    the host path's."""
    from hulurt.media import Media

    path = bundle("qwen2", gqa=True, precision="fp16")
    dev = hulurt.load(path, provider="cuda", verify_hashes=False, vision_batch=4)
    host = hulurt.load(path, provider="cuda", verify_hashes=False, vision_batch=4, device_rows=False)
    rng = np.random.default_rng(2)
    frames = np.repeat(rng.integers(0, 256, size=(1, 56, 56, 3), dtype=np.uint8), 6, axis=0)
    frames[3:, 28:] = rng.integers(0, 256, size=(3, 28, 56, 3), dtype=np.uint8)
    media = [Media(frames, "video", "clip")]
    feed = dev.prepare_media("What changes?", media, token_reduction=True)
    assert feed.visuals[0].keep is not None and 0 < feed.visuals[0].keep.sum() < feed.visuals[0].keep.size
    gen = dev._gen(True)
    rows = gen.visual_rows(feed.visuals, [4], on_device=True)
    assert rows.device == "cuda" and rows.value.device_name().lower() == "cuda"
    assert np.array_equal(rows.numpy(), gen.visual_rows(feed.visuals, [4]))
    a = dev.run(feed, max_new_tokens=12, stop_ids=()).result().token_ids
    b = host.run(host.prepare_media("What changes?", media, token_reduction=True), max_new_tokens=12,
                 stop_ids=()).result().token_ids
    assert a == b and dev._gen(True)._rows is not None and host._gen(True)._rows is None


def test_cuda_logits_match_cpu() -> None:
    """Prefill logits of the device path vs the same fp16 graph on the CPU provider, same embeddings."""
    path = bundle("qwen2", gqa=True, precision="fp16")
    gpu = hulurt.load(path, provider="cuda", verify_hashes=False, cuda_graph=False)
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False, decoder_form="gqa-static")
    emb = np.random.default_rng(0).standard_normal((1, 9, gpu.facts.dims.hidden)).astype(np.float16)
    rows = []
    for m in (gpu, cpu):
        static = m._gen(False).static_decoder()
        static.begin(9)
        rows.append(static.prefill(emb, want_logits=True)[1].astype(np.float64).ravel())
    cos = float(rows[0] @ rows[1] / (np.linalg.norm(rows[0]) * np.linalg.norm(rows[1])))
    assert cos >= tolerance("decoder_gqa", "fp16", "ort-cuda").min_cosine, cos


def test_device_keep_mask_equals_numpy() -> None:
    """hulurt.device_reduce (kernels/token_reduce on an onnxruntime CUDA buffer) == the numpy mask, exactly."""
    from hulurt import reduction
    from hulurt.device_reduce import device_reducer

    fn = device_reducer()
    if fn is None:
        pytest.skip("token-reduction kernel library not built (make -C kernels lib)")
    rng = np.random.default_rng(1)
    base = rng.uniform(-1, 1, size=(1, 300, 2352)).astype(np.float32)
    step = rng.uniform(-1, 1, size=(11, 300, 2352)).astype(np.float32) * rng.uniform(0, 0.25, size=(11, 300, 1))
    tokens = np.concatenate([base, base + np.cumsum(step, axis=0).astype(np.float32)]).clip(-1, 1)
    for mode in ("bf16", "fp32"):
        want = reduction.keep_mask(tokens, 0.1, 1, mode)
        got = fn(tokens, 0.1, 1, mode)
        assert got.dtype == bool and np.array_equal(got, want) and 0 < want.sum() < want.size, mode
