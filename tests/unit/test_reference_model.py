"""HuluMed reference: reduction known answers, compaction, token counts, KV cache, generate fp32/bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from huluexport.checkpoint.random_weights import random_state
from huluexport.config import SIZES
from huluexport.errors import UnsupportedInputError
from huluexport.reference.model import HuluMed, VisualInput
from huluexport.reference.weights import load_model
from huluexport.tolerances import get

IMG = SIZES["tiny"].tokens.image


@pytest.fixture(scope="module")
def model() -> HuluMed:
    cfg = SIZES["tiny"]
    m = HuluMed(cfg)
    m.load_state_dict(random_state(cfg, seed=11), strict=True)
    return m.eval()


def _video(t: int, gh: int, gw: int, seed: int = 0) -> np.ndarray:
    """[T, gh*gw, 588] patches in merge-grouped order, 8-bit-derived values (u8 / 127.5 - 1)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(t, gh * gw, 588)) / 127.5 - 1).astype(np.float32)


def test_compression_known_answer_three_frames(model: HuluMed) -> None:
    gh, gw = 4, 6  # m = 2 -> 2 x 3 = 6 merged tokens per frame, 4 patches each
    x = np.repeat(_video(1, gh, gw), 3, axis=0)
    changed = 4  # merged token 4 = patches 16..19 in merge-grouped order
    x[1, 4 * changed : 4 * changed + 4] = -x[1, 4 * changed : 4 * changed + 4]  # frame 1: one block differs
    # frame 2 == frame 1: static, keeps exactly its token 0 (min_tokens = 1)
    x[2] = x[1]
    vis = VisualInput(x, (gh, gw), 2, "video")
    keep = model.keep_mask(vis)
    assert keep.tolist() == [[True] * 6, [i == changed for i in range(6)], [i == 0 for i in range(6)]]


def test_images_and_single_frames_never_compressed(model: HuluMed) -> None:
    x = np.zeros((1, 16, 588), np.float32)
    assert model.keep_mask(VisualInput(x, (4, 4), 1, "image")).all()
    assert model.keep_mask(VisualInput(x, (4, 4), 2, "video")).all()  # T = 1
    static = np.zeros((3, 16, 588), np.float32)
    assert model.keep_mask(VisualInput(static, (4, 4), 1, "image")).all()  # an image modal is never pruned
    off = HuluMed(SIZES["tiny"].replace(reduction=SIZES["tiny"].reduction.__class__(enabled=False)))
    assert off.keep_mask(VisualInput(static, (4, 4), 2, "video")).all()


def test_token_counts_and_compaction(model: HuluMed) -> None:
    gh, gw = 4, 4  # m = 2 -> 4 merged tokens per frame
    x = np.repeat(_video(1, gh, gw, seed=3), 3, axis=0)  # all static after frame 0
    image = _video(1, 2, 4, seed=4)  # m = 1 -> 8 tokens
    visuals = [VisualInput(image, (2, 4), 1, "image"), VisualInput(x, (gh, gw), 2, "video")]
    n_visual = 8 + 3 * 4
    ids = [287, 10, *[IMG] * 8, 198, *[IMG] * 4, 44, *[IMG] * 4, 44, *[IMG] * 4, 198, 20, 288]
    assert sum(i == IMG for i in ids) == n_visual  # image ids == sum of merged tokens (pre-compression)
    prep = model.prepare_inputs(ids, visuals)
    kept = int(prep.keep.sum())
    assert prep.keep.shape == (n_visual,) and kept == 8 + 4 + 1 + 1
    assert int((prep.input_ids == IMG).sum()) == kept  # rows of F after compaction
    assert prep.input_ids.shape[0] == len(ids) - (n_visual - kept)  # text ids never dropped
    assert prep.position_ids.tolist() == [list(range(prep.input_ids.shape[0]))]  # no gaps
    # the visual rows are the projected features, in order
    with torch.no_grad():
        feats = torch.cat([model.encode(v).reshape(-1, 64) for v in visuals])[torch.from_numpy(prep.keep)]
    rows = prep.inputs_embeds[0][prep.input_ids == IMG]
    assert torch.equal(rows, feats)
    text = prep.inputs_embeds[0][prep.input_ids != IMG]
    assert torch.equal(text, model.decoder.embed(prep.input_ids[prep.input_ids != IMG]))
    with pytest.raises(UnsupportedInputError, match="image ids"):
        model.prepare_inputs(ids[:-3] + [IMG, 1, 2], visuals[:1])


def test_chunked_prefill_equals_full_prefill(model: HuluMed) -> None:
    ids = torch.randint(0, 284, (1, 13), generator=torch.Generator().manual_seed(1))
    emb = model.decoder.embed(ids)
    pos = torch.arange(13)[None]
    with torch.no_grad():
        full, _ = model.decoder(emb, pos)
        a, past = model.decoder(emb[:, :6], pos[:, :6])
        b, past = model.decoder(emb[:, 6:7], pos[:, 6:7], past)
        c, past = model.decoder(emb[:, 7:], pos[:, 7:], past)
    assert past[0][0].shape == (1, 2, 13, 16)
    err = float((torch.cat([a, b, c], 1) - full).abs().max())
    assert err <= get("decoder", "fp32", "kv-chunked").max_abs, err
    assert float(full.std()) > 1e-2


def test_sampling_is_seeded_and_top_k_1_is_greedy(model: HuluMed) -> None:
    ids = [287, 40, 41, 42, 198, 287]
    greedy = model.generate(ids, max_new_tokens=6, eos=())
    assert model.generate(ids, max_new_tokens=6, do_sample=True, top_k=1, seed=3, eos=()) == greedy
    s1 = model.generate(ids, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3, eos=())
    s2 = model.generate(ids, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3, eos=())
    assert s1 == s2 and len(s1) == 6


def test_generate_stops_on_eos(model: HuluMed) -> None:
    ids = [287, 40, 41]
    first = model.generate(ids, max_new_tokens=1, eos=())[0]
    assert model.generate(ids, max_new_tokens=5, eos=(first,)) == [first]


def test_reference_generate_bf16_with_video(tiny_ckpts: dict[str, Path]) -> None:
    d = tiny_ckpts["hf-qwen2"]
    m16 = load_model(d)  # stored dtype: bf16
    m32 = load_model(d, "float32")
    assert m16.dtype == torch.bfloat16
    x = _video(3, 4, 4, seed=9)
    vis = [VisualInput(x, (4, 4), 2, "video")]
    ids = [287, 10, *[IMG] * 4, 44, *[IMG] * 4, 44, *[IMG] * 4, 198, 20, 288, 198, 287]
    out = m16.generate(ids, vis, max_new_tokens=8)
    assert 1 <= len(out) <= 8 and all(0 <= t < 320 for t in out)
    l16 = m16.prefill_logits(ids, vis)
    l32 = m32.prefill_logits(ids, vis)
    assert l16.dtype == torch.float32 and l16.shape == l32.shape
    cos = torch.nn.functional.cosine_similarity(l16, l32, dim=-1)
    tol = get("reference", "bf16", "reference-fp32")
    assert float(cos.min()) >= tol.min_cosine, f"bf16 vs fp32 logits cosine {float(cos.min()):.4f}"
    assert float(l16.std()) > 1e-2


@pytest.mark.slow
def test_decoder_forward_is_torch_exportable_with_dynamic_seq_and_past() -> None:
    from huluexport.reference.decoder import Decoder

    dec = Decoder(SIZES["tiny"].decoder).eval()

    class Piece(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = dec

        def forward(self, e, p, k0, v0, k1, v1):  # type: ignore[no-untyped-def]
            logits, pres = self.dec(e, p, [(k0, v0), (k1, v1)])
            return logits[:, -1], *[t for kv in pres for t in kv]

    seq = torch.export.Dim("seq_len", min=1, max=1024)
    past = torch.export.Dim("past_len", min=0, max=1024)
    args = (torch.randn(1, 5, 64), torch.arange(3, 8)[None], *[torch.randn(1, 2, 3, 16) for _ in range(4)])
    ep = torch.export.export(Piece().eval(), args, dynamic_shapes=({1: seq}, {1: seq}, *[{2: past}] * 4))
    empty = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    e = torch.randn(1, 2, 64)
    got = ep.module()(e, torch.tensor([[0, 1]]), *empty)
    ref, _ = dec(e, torch.tensor([[0, 1]]))
    torch.testing.assert_close(got[0], ref[:, -1])
