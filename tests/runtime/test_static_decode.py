"""The gqa-static decoder form in hulurt on onnxruntime CPU: which form each provider gets, the static KV buffers
written in place across requests, device argmax vs host sampling, and the same tokens as the v1 form."""

from __future__ import annotations

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.errors import ContextLengthError, ContractError
from hulurt.static_decode import select_decoder

BOTH = frozenset({"vision", "embed", "decoder", "decoder_gqa"})


@pytest.mark.parametrize(
    "provider, pieces, force, want",
    [
        ("cuda", BOTH, None, "decoder_gqa"),  # GPU: the form a CUDA graph can replay
        ("tensorrt", BOTH, None, "decoder"),  # TensorRT cannot build GroupQueryAttention
        ("cpu", BOTH, None, "decoder"),  # CPU: v1 stays the default
        ("trt-native", BOTH, None, "decoder"),
        ("cuda", frozenset({"embed", "decoder"}), None, "decoder"),  # an older bundle: v1 everywhere
        ("cpu", frozenset({"embed", "decoder_gqa"}), None, "decoder_gqa"),  # gqa-only bundle runs on CPU too
        ("cpu", BOTH, "gqa-static", "decoder_gqa"),  # forced (tests, benchmarks)
        ("cuda", BOTH, "v1-concat", "decoder"),
    ],
)
def test_select_decoder(provider: str, pieces: frozenset[str], force: str | None, want: str) -> None:
    assert select_decoder(provider, pieces, force) == want


def test_select_decoder_keeps_fp32_bundles_on_v1_on_cuda() -> None:
    """onnxruntime's CUDA provider has GroupQueryAttention for fp16/bf16 only: an fp32 bundle would run the op
    on the CPU with the KV buffers copied both ways per step, so CUDA picks v1 there unless forced."""
    assert select_decoder("cuda", BOTH, None, "float32") == "decoder"
    assert select_decoder("cuda", BOTH, None, "float16") == "decoder_gqa"
    assert select_decoder("cuda", BOTH, "gqa-static", "float32") == "decoder_gqa"
    assert select_decoder("cuda", frozenset({"embed", "decoder_gqa"}), None, "float32") == "decoder_gqa"


def test_select_decoder_refuses_what_the_bundle_lacks() -> None:
    with pytest.raises(ContractError, match=r"no 'decoder_gqa' piece.*--decoder-form gqa-static"):
        select_decoder("cuda", frozenset({"embed", "decoder"}), "gqa-static")
    with pytest.raises(ContractError, match="unknown"):
        select_decoder("cuda", BOTH, "gqa")
    with pytest.raises(ContractError, match="needs a decoder piece"):
        select_decoder("cpu", frozenset({"embed"}))


@pytest.fixture(scope="module")
def gqa_bundle():
    return bundle("qwen2", gqa=True)


def test_cpu_auto_keeps_v1_and_forced_gqa_gives_the_same_tokens(gqa_bundle) -> None:
    auto = hulurt.load(gqa_bundle, provider="auto", threads=1, verify_hashes=False)
    assert auto.decoder_piece == "decoder" and not auto.uses_cuda_graph  # no GPU provider here
    gqa = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    assert gqa.decoder_piece == "decoder_gqa" and "seqlens_k" in gqa.session("decoder").input_names()
    for prompt, n in (("Describe the heart.", 16), ("Is the liver normal?", 9)):  # 2 requests, 1 set of buffers
        want = auto.generate(prompt, max_new_tokens=n, stop_ids=())
        got = gqa.generate(prompt, max_new_tokens=n, stop_ids=())
        assert got.token_ids == want.token_ids and len(set(got.token_ids)) > 1
        assert got.text == want.text and got.timings.decode_steps == n - 1
    g = gqa._gen(False)
    assert g.kv_strategy == "static" and g.static_decoder().capacity == gqa.facts.max_context
    assert g.static_decoder().length == gqa.prepare("Is the liver normal?").input_ids.size + 9 - 1


def test_static_buffers_are_written_in_place(gqa_bundle) -> None:
    model = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    static = model._gen(False).static_decoder()
    before = [buf.data_ptr() for buf in static.kv]
    host = static._host[: len(static.kv)]  # the numpy arrays behind the CPU OrtValues
    out = model.generate("Describe the heart.", max_new_tokens=6, stop_ids=())
    assert [buf.data_ptr() for buf in static.kv] == before  # never reallocated
    n = static.length
    assert n == model.prepare("Describe the heart.").input_ids.size + 5
    for arr in host:  # rows [0, n) written by the op itself, in our memory; the rest untouched zeros
        assert np.abs(arr[:, :, :n]).max() > 0 and not arr[:, :, n:].any()
    assert len(out.token_ids) == 6


def test_sampling_takes_the_logits_path_and_repeats_with_a_seed(gqa_bundle) -> None:
    from hulurt.sampling import SamplingConfig

    v1 = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False)
    gqa = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    s = SamplingConfig(greedy=False, temperature=1.5, top_k=50, seed=7)
    a = v1.generate("What is shown?", max_new_tokens=12, sampling=s, stop_ids=())
    b = gqa.generate("What is shown?", max_new_tokens=12, sampling=s, stop_ids=())
    assert a.token_ids == b.token_ids  # same logits (fp32, within 1e-4) -> same seeded draws
    pen = SamplingConfig(greedy=True, repetition_penalty=1.3)  # greedy but penalised: host argmax of logits
    a = v1.generate("What is shown?", max_new_tokens=12, sampling=pen, stop_ids=())
    b = gqa.generate("What is shown?", max_new_tokens=12, sampling=pen, stop_ids=())
    assert a.token_ids == b.token_ids


def test_static_capacity_is_checked(gqa_bundle) -> None:
    from hulurt.static_decode import StaticDecoder

    model = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    small = StaticDecoder(model.session("decoder"), model.session("embed"), model.facts.dims, capacity=8)
    with pytest.raises(ContextLengthError, match="holds 8"):
        small.begin(9)
    small.begin(8)
    small.prefill(np.zeros((1, 8, model.facts.dims.hidden), np.float32), want_logits=False)
    with pytest.raises(ContextLengthError, match="full"):
        small.step(1, want_logits=False)
    with pytest.raises(ContractError, match="does not apply"):
        hulurt.load(gqa_bundle, provider="cpu", verify_hashes=False, decoder_form="gqa-static",
                    kv_strategy="chain").generate("x", max_new_tokens=2)


def test_cpu_requests_keep_the_numpy_reduction(gqa_bundle) -> None:
    """Off the CUDA provider no device reducer is chosen (the numpy mask runs); asked for anyway, it refuses
    cleanly where onnxruntime has no CUDA provider, so the numpy path stays the fallback."""
    from hulurt.device_reduce import device_reducer

    model = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False)
    assert model.keep_mask_fn is None
    assert device_reducer() is None  # this machine: CPU onnxruntime, no kernel library


def test_keep_mask_fn_is_what_build_inputs_calls() -> None:
    """InputOptions.keep_mask_fn replaces the numpy mask; with the numpy function itself the inputs are equal."""
    from hulurt import reduction
    from hulurt.inputs import InputOptions, build_inputs
    from hulurt.media import Media

    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, size=(1, 56, 56, 3), dtype=np.uint8), 4, axis=0)
    frames[2:, :28] = rng.integers(0, 256, size=(2, 28, 56, 3), dtype=np.uint8)  # half the picture changes
    calls = []

    def recorded(tokens, threshold, min_kept, mode):
        calls.append(tokens.shape)
        return reduction.keep_mask(tokens, threshold, min_kept, mode)

    class Tok:
        def encode(self, text):
            return [ord(c) % 200 for c in text]

    def build(fn):
        opts = InputOptions(compression=True, keep_mask_fn=fn)
        return build_inputs([Media(frames, "video", "synthetic")], "What moves?", Tok(), 250, opts, None)

    a, b = build(None), build(recorded)
    assert len(calls) == 1 and calls[0][0] == 4
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.keep_mask, b.keep_mask)
    assert 0 < a.keep_mask.sum() < a.keep_mask.size  # the mask really drops some tokens


def test_image_request_through_the_static_path(gqa_bundle, tmp_path) -> None:
    """Visual rows reach the gqa-static prefill through the embed graph's device-side output: same tokens."""
    from PIL import Image

    rng = np.random.default_rng(5)
    png = tmp_path / "scan.png"
    Image.fromarray(rng.integers(0, 256, size=(70, 98, 3), dtype=np.uint8)).save(png)
    v1 = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False)
    gqa = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    a = v1.generate("What is shown?", images=[png], max_new_tokens=10, stop_ids=())
    b = gqa.generate("What is shown?", images=[png], max_new_tokens=10, stop_ids=())
    assert b.timings.visual_tokens_after > 0 and b.timings.prompt_tokens > b.timings.visual_tokens_after
    assert a.token_ids == b.token_ids


def test_chunked_static_prefill_gives_the_same_tokens(gqa_bundle, tmp_path) -> None:
    """prefill_chunk splits the gqa-static prefill too (each chunk's visual rows embedded with it): same tokens
    as one call, with chunks of 1, 5 and 64 that cut through the image's rows."""
    from PIL import Image

    rng = np.random.default_rng(6)
    png = tmp_path / "scan.png"
    Image.fromarray(rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)).save(png)
    whole = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static",
                        prefill_chunk=10_000)
    want = whole.generate("What is shown?", images=[png], max_new_tokens=8, stop_ids=())
    for chunk in (1, 5, 64):
        m = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static",
                        prefill_chunk=chunk)
        got = m.generate("What is shown?", images=[png], max_new_tokens=8, stop_ids=())
        assert got.token_ids == want.token_ids, chunk
        assert got.timings.prefill_chunk == min(chunk, got.timings.prompt_tokens)


@pytest.mark.parametrize("form", ["v1-concat", "gqa-static"])
def test_on_logits_sees_every_row_a_greedy_token_came_from(gqa_bundle, form: str) -> None:
    """Model.run(on_logits=...) hands over each logits row, also on the greedy paths that otherwise keep it
    on the device; the tokens do not change, and each is the argmax of its row."""
    model = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form=form)
    feed = model.prepare("Describe the heart.")
    plain = model.run(feed, max_new_tokens=8, stop_ids=()).result().token_ids
    rows: list[np.ndarray] = []
    seen = model.run(feed, max_new_tokens=8, stop_ids=(), on_logits=lambda r: rows.append(np.array(r))).result()
    assert seen.token_ids == plain and len(rows) == 8
    assert all(r.shape == (1, model.facts.dims.vocab) and r.dtype == np.float32 for r in rows)
    assert [int(np.argmax(r)) for r in rows] == plain
    assert len({r.tobytes() for r in rows}) == 8  # one row per step, not one buffer seen 8 times


def test_graph_mode_bindings_give_the_same_tokens_on_the_cpu(gqa_bundle) -> None:
    """StaticDecoder(cuda_graph=True) as the CUDA path drives it, on the CPU provider: the step binding is made
    once with total_sequence_length fixed at the capacity (the value a captured graph keeps; only seqlens_k
    carries the length), the steps run with gpu_graph_id 1 and the prefill with -1. GroupQueryAttention's input
    checks are onnxruntime's shared helper (the capacity must not exceed the RoPE tables' rows), and the tokens
    must equal the exact-length path's over two requests on one set of buffers."""
    from hulurt.static_decode import GRAPH_DECODE, GRAPH_NONE, StaticDecoder

    exact = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    graph = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    gen = graph._gen(False)
    capacity = gen._static_args[0]
    assert capacity == graph.facts.max_context  # the default: as many rows as the RoPE tables
    gen._static = StaticDecoder(graph.session("decoder"), graph.session("embed"), graph.facts.dims, capacity,
                                cuda_graph=True)
    static = gen._static
    assert static._run_step.get_run_config_entry("gpu_graph_id") == GRAPH_DECODE
    assert static._run_once.get_run_config_entry("gpu_graph_id") == GRAPH_NONE
    for prompt, n in (("Describe the heart.", 16), ("Is the liver normal?", 9)):
        want = exact.generate(prompt, max_new_tokens=n, stop_ids=())
        got = graph.generate(prompt, max_new_tokens=n, stop_ids=())
        assert got.token_ids == want.token_ids and len(set(got.token_ids)) > 1
    assert static.steps == 15 + 8 and int(static._total_step) == capacity


def test_concurrent_requests_take_turns_on_the_static_decoder(gqa_bundle) -> None:
    """One Model, one set of KV buffers: requests from several threads (hulurt serve --concurrency 3) must each
    get the tokens they get alone; the same thread opening a second stream while iterating the first is refused."""
    import threading

    from hulurt.errors import HuluRuntimeError

    model = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static")
    prompts = [("Describe the heart.", 14), ("Is the liver normal?", 11), ("What is shown?", 12)]
    alone = {p: model.generate(p, max_new_tokens=n, stop_ids=()).token_ids for p, n in prompts}
    start = threading.Barrier(len(prompts))
    gens: dict[str, list[int]] = {}

    def run(p: str, n: int) -> None:
        start.wait()
        g = model.stream(p, max_new_tokens=n, stop_ids=())
        for _ in g:
            pass
        gens[p] = g.token_ids

    threads = [threading.Thread(target=run, args=pn) for pn in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert gens == alone

    first = iter(model.stream("Describe the heart.", max_new_tokens=6, stop_ids=()))
    next(first)  # this thread now holds the decoder
    second = iter(model.stream("What is shown?", max_new_tokens=6, stop_ids=()))
    with pytest.raises(HuluRuntimeError, match="finish or close that stream first"):
        next(second)
    first.close()  # released: the next request runs
    assert model.generate("What is shown?", max_new_tokens=12, stop_ids=()).token_ids == alone["What is shown?"]


def test_kv_capacity_sizes_the_buffers_and_every_context_check() -> None:
    """hulurt.load(kv_capacity=N): the gqa-static buffers hold N rows, a request that fits decodes the same tokens
    as the bundle's full capacity, and one that does not is refused up front naming the KV capacity (on v1 too)."""
    path = bundle("qwen2", gqa=True)
    full = hulurt.load(path, provider="cpu", verify_hashes=False, decoder_form="gqa-static")
    small = hulurt.load(path, provider="cpu", verify_hashes=False, decoder_form="gqa-static", kv_capacity=96)
    loaded = small._generator._static if small._generator is not None else None  # allocated by load, not later
    assert loaded is not None and loaded.capacity == 96
    want = full.generate("Describe the heart.", max_new_tokens=12, stop_ids=())
    got = small.generate("Describe the heart.", max_new_tokens=12, stop_ids=())
    assert got.token_ids == want.token_ids and len(set(got.token_ids)) > 1
    static = small._gen(False).static_decoder()
    assert static is loaded and all(b.shape()[2] == 96 for b in static.kv)
    assert full._gen(False).static_decoder().capacity == full.manifest.limits.max_context > 96
    n = got.timings.prompt_tokens
    for m in (small, hulurt.load(path, provider="cpu", verify_hashes=False, kv_capacity=96)):  # gqa-static, v1
        with pytest.raises(ContextLengthError, match=r"exceeds the KV capacity \(kv_capacity / --kv-capacity\) "
                                                     r"of 96 tokens"):
            m.generate("Describe the heart.", max_new_tokens=97 - n, stop_ids=())
        assert len(m.generate("Describe the heart.", max_new_tokens=96 - n, stop_ids=()).token_ids) == 96 - n
    with pytest.raises(ContractError, match="kv_capacity 5000: expected at most this bundle's max_context 4096"):
        hulurt.load(path, provider="cpu", verify_hashes=False, kv_capacity=5000)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="kv_capacity must be an integer >= 1"):
            hulurt.load(path, provider="cpu", verify_hashes=False, kv_capacity=bad)


def test_check_kv_room_refuses_with_the_capacity_that_fits() -> None:
    """The GPU's refusal before allocating the KV buffers (hulurt.static_decode.check_kv_room), on numbers: 2 GiB
    for 32768 tokens (64 KiB a token) against 1 GiB free suggests the 8192 tokens that take half of it."""
    from hulurt.errors import DeviceMemoryError
    from hulurt.static_decode import check_kv_room

    need, cap = 2 << 30, 32768
    check_kv_room(need, cap, None, 0, "KV")  # free memory unknown: no check
    check_kv_room(need, cap, need, 0, "KV")  # exactly enough
    with pytest.raises(DeviceMemoryError, match=r"KV need 2.00 GiB for 32768 tokens, but CUDA device 1 has 1.00 GiB "
                                                r"free .* kv_capacity=8192 \(hulurt.load\) or --kv-capacity 8192"):
        check_kv_room(need, cap, 1 << 30, 1, "KV")
    with pytest.raises(DeviceMemoryError, match="no capacity fits"):
        check_kv_room(need, cap, 100_000, 0, "KV")  # less than two tokens' rows free
