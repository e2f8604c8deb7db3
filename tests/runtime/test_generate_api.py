"""The Python API on a real tiny bundle (onnxruntime CPU): hulurt.load, stream/generate, KV strategies agree,
context checked before any file is read, stop ids and defaults from the manifest."""

from __future__ import annotations

from pathlib import Path

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.errors import ContextLengthError, UnsupportedInputError


@pytest.fixture(scope="module")
def model():
    return hulurt.load(bundle("qwen2"), provider="cpu", threads=1)


def test_load_is_exported_lazily_and_reads_the_manifest(model) -> None:
    from hulurt.api import load

    assert hulurt.load is load
    m = model.manifest
    assert model.facts.max_context == m.limits.max_context
    assert set(m.tokens.eos) <= set(model.facts.stop_ids) and m.tokens.im_end in model.facts.stop_ids
    assert model.facts.image_token_id == m.tokens.image
    assert model.provider == "cpu"


def test_stream_and_generate_agree(model) -> None:
    gen = model.stream("Describe the heart.", max_new_tokens=10, stop_ids=())
    pieces = list(gen)
    again = model.generate("Describe the heart.", max_new_tokens=10, stop_ids=())
    assert again.token_ids == gen.token_ids and len(gen.token_ids) == 10
    assert "".join(pieces) == gen.text == again.text
    t = gen.timings
    assert t.prompt_tokens > 5 and t.decode_steps == 9 and t.ttft_s >= t.prefill_s > 0
    assert t.visual_tokens_before == t.visual_tokens_after == 0


def test_kv_strategies_give_the_same_tokens(model) -> None:
    feed = model.prepare("Is the liver normal?")
    assert model._gen(False).kv_strategy == "buffer"  # the CPU default
    buffered = model.run(feed, max_new_tokens=12, stop_ids=()).result().token_ids
    chain_model = hulurt.load(model.manifest.root, provider="cpu", threads=1, verify_hashes=False, kv_strategy="chain")
    chain = chain_model.run(feed, max_new_tokens=12, stop_ids=()).result().token_ids
    # "device": the IO-binding path of the GPU providers (OrtValues chained between steps), run here on CPU
    bound_model = hulurt.load(model.manifest.root, provider="cpu", threads=1, verify_hashes=False, kv_strategy="device")
    bound = bound_model.run(feed, max_new_tokens=12, stop_ids=()).result().token_ids
    assert chain == buffered == bound
    assert len(set(chain)) > 1


def test_default_max_new_tokens_is_clamped_to_the_context(model) -> None:
    feed = model.prepare("hello")
    g = model._gen(False)
    room = model.facts.max_context - feed.input_ids.size
    assert g.resolve_max_new_tokens(feed.input_ids.size, None) == min(model.facts.default_max_new_tokens, room)
    assert g.resolve_max_new_tokens(feed.input_ids.size, 7) == 7


def test_context_checked_before_files_are_read(model, tmp_path: Path) -> None:
    with pytest.raises(ContextLengthError, match="max_new_tokens 100000"):
        model.stream("hi", images=[tmp_path / "does-not-exist.png"], max_new_tokens=100_000)
    with pytest.raises(UnsupportedInputError, match="does-not-exist.png"):
        model.stream("hi", images=[tmp_path / "does-not-exist.png"], max_new_tokens=4)


def test_empty_prompt_is_refused(model) -> None:
    with pytest.raises(UnsupportedInputError, match="prompt is empty"):
        model.generate("   ")


def test_sampling_through_the_api_is_seeded(model) -> None:
    from hulurt.sampling import SamplingConfig

    cfg = SamplingConfig(greedy=False, temperature=1.2, top_p=0.95, seed=3)
    a = model.generate("Name an organ.", max_new_tokens=12, sampling=cfg, stop_ids=()).token_ids
    b = model.generate("Name an organ.", max_new_tokens=12, sampling=cfg, stop_ids=()).token_ids
    assert a == b and len(set(a)) > 1
    assert np.any(np.array(a) != np.array(model.generate("Name an organ.", max_new_tokens=12, stop_ids=()).token_ids))


def test_media_objects_and_a_caller_tokenizer(model) -> None:
    """Already-read frames (hulurt.media.Media) go through the same input code as files; the request's
    preprocessing reports its reduction stage apart; a caller's tokenizer replaces the bundle's."""
    from hulurt.api import Model
    from hulurt.media import Media

    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, size=(1, 56, 56, 3), dtype=np.uint8), 4, axis=0)
    frames[2:, :28] = 255 - frames[2:, :28]  # half of the picture changes at frame 2: some tokens dropped
    vol = Media(frames, "3d", "synthetic volume")
    feed = model.prepare_media("What is shown?", [vol])
    assert {"preprocess", "reduction"} <= set(feed.stages) and feed.preprocess_s >= sum(feed.stages.values())
    v = feed.visuals[0]
    assert v.keep is not None and 0 < v.tokens_after < v.tokens_before
    res = model.run(feed, max_new_tokens=3, stop_ids=()).result()
    assert res.timings.stages["reduction"] == feed.stages["reduction"] and res.timings.stages["vision"] > 0

    class Bytes:
        def encode(self, text: str) -> list[int]:
            return list(text.encode())

        def decode(self, ids, skip_special_tokens: bool = True) -> str:
            return " ".join(map(str, ids))

    own = Model(model.manifest, model.options, tokenizer=Bytes())
    feed = own.prepare("abc")
    assert b"abc" in bytes(i for i in feed.input_ids.tolist() if i < 256)
    assert own.run(feed, max_new_tokens=2, stop_ids=()).result().text.count(" ") == 1


def test_input_code_alone_opens_no_graph(model) -> None:
    """A Model used for its input code only (huluexport bench's reference side) loads no graph for a request
    without token reduction: looking for the GPU reducer used to open the decoder session, which on the
    7B-width slice held 5.6 GB beside the reference on the CPU (docs/gpu.md, the CPU rehearsal)."""
    from hulurt.api import Model
    from hulurt.media import Media

    frames = np.random.default_rng(1).integers(0, 256, size=(4, 56, 56, 3), dtype=np.uint8)
    inputs_only = Model(model.manifest, model.options)
    mi = inputs_only.media_inputs("What is shown?", [Media(frames, "3d", "synthetic volume")], token_reduction=False)
    assert len(mi.visuals) == 1 and inputs_only._sessions == {}
    reduced = inputs_only.media_inputs("What is shown?", [Media(frames, "3d", "synthetic volume")])
    assert reduced.visuals[0].keep is not None  # with reduction the reducer is chosen (this opens the decoder)
