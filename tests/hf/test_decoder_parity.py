"""Our decoder vs transformers Qwen2ForCausalLM / Qwen3ForCausalLM, weights copied through our weight map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from huluexport.checkpoint import checkpoint_name, from_checkpoint, plan
from huluexport.config import DecoderConfig
from huluexport.reference.weights import iter_tensors, load_model
from huluexport.tolerances import get

pytestmark = pytest.mark.hf


def _hf_decoder(d: Path) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    cfg = from_checkpoint(d)
    dec: DecoderConfig = cfg.decoder
    tied = plan(d, cfg).tie_lm_head  # docs/model.md §1.4: a stored lm_head wins over the tie flag
    common = dict(
        vocab_size=dec.vocab,
        hidden_size=dec.hidden,
        intermediate_size=dec.intermediate,
        num_hidden_layers=dec.layers,
        num_attention_heads=dec.heads,
        num_key_value_heads=dec.kv_heads,
        rms_norm_eps=dec.eps,
        max_position_embeddings=dec.max_position,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": dec.rope_theta},
    )
    if dec.qk_norm:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=dec.head_dim, attention_bias=False, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    state = {
        checkpoint_name(ref): t
        for ref, t in iter_tensors(d, cfg, torch.float32)
        if ref.startswith("decoder.")
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("flavor", ["qwen2", "qwen3", "qwen3-stored"])
def test_prefill_and_8_greedy_steps_match_transformers(ckpt_dirs: dict[str, Path], flavor: str) -> None:
    d = ckpt_dirs[flavor]
    ours = load_model(d, "float32")
    hf = _hf_decoder(d)
    tol = get("decoder", "fp32", "transformers")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 284, (1, 7), generator=gen)

    with torch.no_grad():
        ref_logits = hf(input_ids=ids).logits.float()[0]
        out, past = ours.decoder(ours.decoder.embed(ids), torch.arange(7)[None])
    logits = out[0]
    assert logits.shape == ref_logits.shape == (7, ours.cfg.decoder.vocab)
    assert float(logits.std()) > 1e-2, "degenerate logits make parity trivial"
    err = float((logits - ref_logits).abs().max())
    assert err <= tol.max_abs, f"prefill logits max abs diff {err:.3g} > {tol.max_abs}"

    # 8 greedy steps through our functional KV cache; every step's logits vs a full transformers forward
    tokens: list[int] = []
    step_logits = [logits[-1]]
    with torch.no_grad():
        for step in range(8):
            tok = int(torch.argmax(step_logits[-1]))
            tokens.append(tok)
            if step == 7:
                break
            emb = ours.decoder.embed(torch.tensor([[tok]]))
            out, past = ours.decoder(emb, torch.tensor([[7 + step]]), past)
            step_logits.append(out[0, -1])
        full = torch.cat([ids, torch.tensor([tokens[:-1]])], dim=1)
        ref_full = hf(input_ids=full).logits.float()[0, 6:]
        hf_tokens = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[
            0, 7:
        ]
    err = float((torch.stack(step_logits) - ref_full).abs().max())
    assert err <= tol.max_abs, f"decode-step logits max abs diff {err:.3g} > {tol.max_abs}"
    assert tokens == hf_tokens.tolist()
    assert tokens == ours.generate(ids[0].tolist(), max_new_tokens=8, eos=())
    assert len(set(tokens)) > 1, f"greedy tokens {tokens} are constant: weights too degenerate to test"


def test_qwen3_head_dim_differs_from_hidden_over_heads(ckpt_dirs: dict[str, Path]) -> None:
    dec = from_checkpoint(ckpt_dirs["qwen3"]).decoder
    assert dec.heads * dec.head_dim != dec.hidden  # the 4B trap: 4 x 16 = 64 != 48
