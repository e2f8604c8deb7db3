"""The CUDA path of hulurt (onnxruntime-gpu): the gqa-static decoder form with KV buffers on the device written
in place, fixed step buffers, device argmax and a captured CUDA graph; same tokens as the CPU provider.

Skipped, with the reason, without a CUDA device (tests/conftest.py) or without onnxruntime's CUDA provider;
run on a GPU machine by scripts/gpu_bench.sh (docs/gpu.md).
"""

from __future__ import annotations

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.sampling import SamplingConfig

from huluexport.tolerances import get as tolerance

pytestmark = pytest.mark.gpu

PROMPTS = (("Describe the heart.", 16), ("Is the liver normal? Answer briefly.", 12))


@pytest.fixture(scope="module", autouse=True)
def _cuda_provider() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_cuda_runs_gqa_with_a_graph_and_matches_cpu(kind: str) -> None:
    path = bundle(kind, gqa=True)
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False)
    gpu = hulurt.load(path, provider="cuda", verify_hashes=False)
    assert cpu.decoder_piece == "decoder" and gpu.decoder_piece == "decoder_gqa"
    assert gpu.provider == "cuda" and gpu.uses_cuda_graph
    for prompt, n in PROMPTS * 2:  # the second round replays the graph captured in the first
        want = cpu.generate(prompt, max_new_tokens=n, stop_ids=())
        got = gpu.generate(prompt, max_new_tokens=n, stop_ids=())
        assert got.token_ids == want.token_ids, (prompt, got.token_ids, want.token_ids)
    static = gpu._gen(False).static_decoder()
    assert static.cuda_graph and static.device == "cuda"
    assert all(buf.device_name().lower() == "cuda" for buf in static.kv)
    assert static.steps >= 2 * sum(n - 1 for _, n in PROMPTS)


def test_graph_and_no_graph_and_sampling_agree() -> None:
    path = bundle("qwen2", gqa=True)
    graph = hulurt.load(path, provider="cuda", verify_hashes=False)
    plain = hulurt.load(path, provider="cuda", verify_hashes=False, cuda_graph=False)
    assert not plain.uses_cuda_graph
    ptrs = [b.data_ptr() for b in graph._gen(False).static_decoder().kv]
    a = graph.generate("What is shown?", max_new_tokens=20, stop_ids=()).token_ids
    b = plain.generate("What is shown?", max_new_tokens=20, stop_ids=()).token_ids
    assert a == b
    assert [b.data_ptr() for b in graph._gen(False).static_decoder().kv] == ptrs  # never reallocated
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False)
    s = SamplingConfig(greedy=False, temperature=1.3, top_k=40, seed=3)  # logits row comes to the host
    assert graph.generate("What is shown?", max_new_tokens=12, sampling=s, stop_ids=()).token_ids == \
        cpu.generate("What is shown?", max_new_tokens=12, sampling=s, stop_ids=()).token_ids


def test_cuda_logits_match_cpu() -> None:
    """Prefill logits of the device path vs the CPU provider on the same embeddings (fp32 bundle)."""
    path = bundle("qwen2", gqa=True)
    gpu = hulurt.load(path, provider="cuda", verify_hashes=False, cuda_graph=False)
    cpu = hulurt.load(path, provider="cpu", verify_hashes=False, decoder_form="gqa-static")
    emb = np.random.default_rng(0).standard_normal((1, 9, gpu.facts.dims.hidden)).astype(np.float32)
    rows = []
    for m in (gpu, cpu):
        static = m._gen(False).static_decoder()
        static.begin(9)
        rows.append(static.prefill(emb, want_logits=True)[1])
    assert np.abs(rows[0] - rows[1]).max() <= tolerance("decoder_gqa", "fp32", "ort-cuda").max_abs


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
