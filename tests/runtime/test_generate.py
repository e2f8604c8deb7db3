"""Generation loop on FakeSessions (numpy stand-ins that honour the contract): KV bookkeeping, positions,
visual-row placement, stop ids, max_new_tokens, streaming text and the host-safety checks. No onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hulurt.contract import Dims, bind, kv_names, pieces
from hulurt.errors import ContextLengthError, ContractError
from hulurt.generate import BundleFacts, Generator, PromptFeed, VisualFeed, check_context
from hulurt.sampling import SamplingConfig

STOP, IMAGE, OTHER = 256, 257, 258
DIMS = Dims(hidden=8, vocab=260, layers=2, kv_heads=2, head_dim=4, vision_head_dim=8)
SPECS = pieces(DIMS)


class ByteTokenizer:
    """ids 0..255 are UTF-8 bytes; 256+ are special (skipped). A multi-byte character spans several ids."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class FakeSession:
    """A numpy graph with the contract's I/O; checks every feed with hulurt.contract.bind."""

    def __init__(self, name: str, fn) -> None:
        self.path = Path(f"{name}.onnx")
        self.provider = "fake"
        self.name = name
        self.fn = fn
        self.calls: list[dict[str, int]] = []

    def input_names(self) -> list[str]:
        return [s.name for s in SPECS[self.name].inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in SPECS[self.name].outputs]

    def run(self, feeds):
        sizes = bind(SPECS[self.name], feeds)
        self.calls.append(sizes)
        return self.fn(feeds)


def make_sessions(seed: int = 0, script: dict[int, int] | None = None) -> dict[str, FakeSession]:
    """A fake model. The decoder's last-position logits depend on every cached K/V row and on positions, so a
    wrong cache or position shows up in the tokens. `script` {step: token} forces the argmax at a total length."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((DIMS.vocab, DIMS.hidden)).astype(np.float32)
    wk = rng.standard_normal((DIMS.layers, 2, DIMS.hidden, DIMS.kv_heads * DIMS.head_dim)).astype(np.float32)
    wo = rng.standard_normal((DIMS.layers * 2 * DIMS.kv_heads * DIMS.head_dim, DIMS.vocab)).astype(np.float32)
    wv = rng.standard_normal((588, DIMS.hidden)).astype(np.float32) * 0.1

    def vision(f):
        x = f["pixel_patches"].mean(axis=2)  # [T, G, mg, 588] -> [T, G, 588]
        return {"visual_embeds": (x @ wv + f["rope_cos"][:: f["pixel_patches"].shape[2]].sum(-1)[None, :, None] * 0.01)
                .astype(np.float32)}

    def embed(f):
        ids = f["input_ids"][0]
        out = table[ids].copy()
        rows = f["visual_embeds"]
        where = np.flatnonzero(ids == IMAGE)
        assert where.size == rows.shape[0], "embed: image ids != visual rows"
        out[where] = rows
        return {"inputs_embeds": out[None]}

    past_names, present_names = kv_names(DIMS.layers)

    def decoder(f):
        x = f["inputs_embeds"][0]  # [s, H]
        pos = f["position_ids"][0].astype(np.float32)  # [s]
        outs, feats = {}, []
        for i, (pn, qn) in enumerate(zip(past_names, present_names)):
            layer, kv = divmod(i, 2)
            new = np.tanh(x @ wk[layer, kv] + np.sin(pos)[:, None])  # [s, kv*d]
            new = new.reshape(-1, DIMS.kv_heads, DIMS.head_dim).transpose(1, 0, 2)[None]  # -> [1, kv, s, d]
            full = np.concatenate([f[pn], new.astype(np.float32)], axis=2)
            outs[qn] = full
            feats.append((full[:, :, -1] * 3.0 + full.mean(axis=2)).reshape(-1))  # [kv*d]: last row + all rows
        logits = np.concatenate(feats) @ wo
        total = outs[present_names[0]].shape[2]
        if script and total in script:
            logits = logits.copy()
            logits[script[total]] = logits.max() + 10.0
        return {"logits": logits[None].astype(np.float32), **outs}

    return {"vision": FakeSession("vision", vision), "embed": FakeSession("embed", embed),
            "decoder": FakeSession("decoder", decoder)}


def facts(max_context: int = 64) -> BundleFacts:
    return BundleFacts(dims=DIMS, max_context=max_context, stop_ids=(STOP,), image_token_id=IMAGE)


def prompt_ids(text: str, n_image: int = 0) -> np.ndarray:
    ids = [OTHER] + [IMAGE] * n_image + list(text.encode())
    return np.array(ids, dtype=np.int64)


def naive_greedy(sessions, ids: np.ndarray, visual: np.ndarray | None, n: int) -> list[int]:
    """Recompute the whole sequence every step (no cache): what the cached loop must reproduce."""
    out = []
    seq = ids.copy()
    past_names, _ = kv_names(DIMS.layers)
    for _ in range(n):
        vis = visual if visual is not None else np.zeros((0, DIMS.hidden), np.float32)
        emb = sessions["embed"].run({"input_ids": seq[None], "visual_embeds": vis})["inputs_embeds"]
        empty = {k: np.zeros((1, DIMS.kv_heads, 0, DIMS.head_dim), np.float32) for k in past_names}
        logits = sessions["decoder"].run(
            {"inputs_embeds": emb, "position_ids": np.arange(seq.size, dtype=np.int64)[None], **empty}
        )["logits"]
        tok = int(np.argmax(logits))
        out.append(tok)
        seq = np.append(seq, tok)
    return out


@pytest.mark.parametrize("strategy", ["chain", "buffer"])
def test_cached_loop_equals_recompute(strategy: str) -> None:
    sessions = make_sessions()
    gen = Generator(sessions, facts(), kv_strategy=strategy)
    ids = prompt_ids("Describe")
    result = gen.generate(PromptFeed(ids), ByteTokenizer(), max_new_tokens=12, stop_ids=()).result()
    expect = naive_greedy(sessions, ids, None, 12)
    assert result.token_ids == expect
    assert len(set(expect)) > 3  # not a degenerate constant stream
    assert result.stop_reason == "max_new_tokens"
    # one prefill of the whole prompt, then single-token steps with growing past
    dec_calls = sessions["decoder"].calls[: 12]
    assert dec_calls[0]["seq_len"] == ids.size and dec_calls[0]["past_len"] == 0
    assert [c["past_len"] for c in dec_calls[1:]] == list(range(ids.size, ids.size + 11))
    assert all(c["seq_len"] == 1 for c in dec_calls[1:])


def test_visual_rows_reach_the_image_positions_with_reduction_mask() -> None:
    sessions = make_sessions(seed=1)
    rng = np.random.default_rng(5)
    patches = rng.standard_normal((3, 4, 4, 588)).astype(np.float32)  # 3 frames, 2x2 merged grid (4x4 patches)
    keep = np.array([[1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 0, 1]], dtype=bool)
    v = VisualFeed(patches, grid_hw=(4, 4), merge=2, keep=keep)
    ids = prompt_ids("What?", n_image=int(keep.sum()))
    g = Generator(sessions, facts())
    res = g.generate(PromptFeed((ids), (v,)), ByteTokenizer(), max_new_tokens=8, stop_ids=()).result()
    full = g.encode_visual(VisualFeed(patches, (4, 4), 2))  # [12, H], every row
    assert full.shape == (12, DIMS.hidden)
    np.testing.assert_array_equal(g.encode_visual(v), full[keep.reshape(-1)])
    assert res.token_ids == naive_greedy(sessions, ids, full[keep.reshape(-1)], 8)
    t = res.timings
    assert (t.visual_tokens_before, t.visual_tokens_after) == (12, 7)
    assert t.prompt_tokens == ids.size and t.new_tokens == 8 and t.decode_steps == 7
    assert "visual tokens 12 -> 7" in t.summary()
    # the stage clock of the loop: every stage of the request, exclusive, adding up to TTFT + decode
    assert set(t.stages) == {"vision", "embed", "prefill", "decode"}
    assert all(v >= 0 for v in t.stages.values()) and t.stages["decode"] == t.decode_s
    assert sum(t.stages.values()) <= t.ttft_s + t.decode_s
    np.testing.assert_array_equal(g.vision(v).reshape(12, -1), full)  # the raw vision output, every token


def test_stop_id_ends_generation_and_is_not_emitted() -> None:
    ids = prompt_ids("hi")
    n = ids.size
    sessions = make_sessions(script={n: ord("o"), n + 1: ord("k"), n + 2: STOP})
    res = Generator(sessions, facts()).generate(PromptFeed(ids), ByteTokenizer(), max_new_tokens=20).result()
    assert res.token_ids == [ord("o"), ord("k")]
    assert res.text == "ok" and res.stop_reason == "stop_id"


def test_max_new_tokens_is_exact() -> None:
    res = Generator(make_sessions(), facts()).generate(
        PromptFeed(prompt_ids("a")), ByteTokenizer(), max_new_tokens=5, stop_ids=()
    ).result()
    assert len(res.token_ids) == 5


def test_streaming_never_splits_a_multibyte_character() -> None:
    text = "Lung 肺 – ok 🫁!"
    script_ids = list(text.encode("utf-8"))
    ids = prompt_ids("q")
    n = ids.size
    sessions = make_sessions(script={n + i: t for i, t in enumerate(script_ids)} | {n + len(script_ids): STOP})
    pieces: list[str] = []
    called: list[str] = []
    gen = Generator(sessions, facts()).generate(
        PromptFeed(ids), ByteTokenizer(), max_new_tokens=40, on_text=called.append
    )
    for piece in gen:
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert "".join(pieces) == gen.text == text
    assert called == pieces
    assert len(pieces) > 3  # streamed, not one lump at the end


def test_context_checked_before_any_graph_runs() -> None:
    sessions = make_sessions()
    g = Generator(sessions, facts(max_context=20))
    ids = prompt_ids("0123456789")  # 11 tokens
    with pytest.raises(ContextLengthError, match=r"11 tokens \+ max_new_tokens 10 = 21 exceeds .* 20 .* at most 9"):
        g.generate(PromptFeed(ids), ByteTokenizer(), max_new_tokens=10)
    assert all(not s.calls for s in sessions.values())
    with pytest.raises(ContextLengthError, match="max_new_tokens must be >= 1"):
        check_context(3, 0, 20)


def test_image_ids_must_match_visual_rows() -> None:
    sessions = make_sessions()
    patches = np.zeros((1, 4, 1, 588), np.float32)
    v = VisualFeed(patches, grid_hw=(2, 2), merge=1)
    with pytest.raises(ContractError, match="3 image ids .* 4 rows"):
        Generator(sessions, facts()).generate(PromptFeed(prompt_ids("x", 3), (v,)), ByteTokenizer())
    assert not sessions["vision"].calls


def test_visual_input_without_vision_piece_is_refused() -> None:
    sessions = make_sessions()
    del sessions["vision"]
    v = VisualFeed(np.zeros((1, 4, 1, 588), np.float32), grid_hw=(2, 2), merge=1)
    gen = Generator(sessions, facts()).generate(PromptFeed(prompt_ids("x", 4), (v,)), ByteTokenizer())
    with pytest.raises(ContractError, match="no 'vision' piece"):
        gen.result()


def test_seeded_sampling_is_repeatable_through_the_loop() -> None:
    cfg = SamplingConfig(greedy=False, temperature=1.3, top_k=50, top_p=0.95, seed=11)
    runs = [
        Generator(make_sessions(), facts()).generate(
            PromptFeed(prompt_ids("s")), ByteTokenizer(), max_new_tokens=10, sampling=cfg, stop_ids=()
        ).result().token_ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    greedy = Generator(make_sessions(), facts()).generate(
        PromptFeed(prompt_ids("s")), ByteTokenizer(), max_new_tokens=10, stop_ids=()
    ).result().token_ids
    assert runs[0] != greedy


def test_visual_input_outside_the_bundle_ranges_is_refused_before_running() -> None:
    from dataclasses import replace

    from hulurt.contract import DimRange

    sessions = make_sessions()
    limited = replace(facts(), dim_ranges={"n_frames": DimRange(1, 1, 2)}, target="orin-nano")
    v = VisualFeed(np.zeros((3, 4, 4, 588), np.float32), grid_hw=(4, 4), merge=2)
    with pytest.raises(ContextLengthError, match=r"n_frames = 3 is outside the bundle's range \[1, 2\] .*'orin-nano'"):
        Generator(sessions, limited).generate(PromptFeed(prompt_ids("x", 12), (v,)), ByteTokenizer())
    assert not sessions["vision"].calls
