"""The GPU decoder form ("gqa-static", piece `decoder_gqa`): attention by `com.microsoft::GroupQueryAttention`
over KV buffers of a fixed capacity that the runtime allocates once and binds as both past and present.

Per layer the reference attention (huluexport/reference/decoder.py) is kept up to RoPE (q/k/v projections,
Qwen3's q/k RMSNorm, RoPE in fp32 for fp16 graphs), so the cached keys are the same numbers as in contract
v1; only "append to the cache + causal GQA softmax(QK^T)V" becomes one operator:

    q [1, L, nh*d], k/v [1, L, nkv*d], past k/v [1, nkv, C, d], seqlens_k [1] int32 (= T - 1),
    total_sequence_length [] int32  --GroupQueryAttention-->  out [1, L, nh*d], present k/v [1, nkv, C, d]

The new rows land at cache positions [T - L, T); query row i attends keys 0..T - L + i. When the runtime
binds past and present to the same buffer, onnxruntime writes in place (its "past-present share buffer"), so
a decode step (L = 1) has fixed shapes and fixed addresses and can be replayed as a CUDA graph.
docs/gpu.md describes the runtime side.

Tracing: `hulu::gqa` is a torch custom op (eager implementation below, used by tests; a fake one for the meta
device) that the ONNX exporter translates to the contrib op through `TRANSLATIONS`.
"""

from __future__ import annotations

import math

import torch

from huluexport.export.pieces import DecoderPiece
from huluexport.reference.decoder import Attention, rope_cos_sin, rotate_half

MS_DOMAIN = "com.microsoft"


@torch.library.custom_op("hulu::gqa", mutates_args=())
def gqa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_len: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager semantics of GroupQueryAttention with a shared buffer (batch 1, causal, no rotary inside)."""
    _, seq, _ = q.shape
    d = past_k.shape[-1]
    total = int(seqlens_k.reshape(-1)[0]) + 1
    start = total - seq
    pk, pv = past_k.clone(), past_v.clone()
    pk[:, :, start:total] = k.view(1, seq, kv_num_heads, d).transpose(1, 2)  # (1, L, nkv*d) -> (1, nkv, L, d)
    pv[:, :, start:total] = v.view(1, seq, kv_num_heads, d).transpose(1, 2)
    rep = num_heads // kv_num_heads
    kr = pk[:, :, :total].repeat_interleave(rep, dim=1)  # (1, nh, T, d)
    vr = pv[:, :, :total].repeat_interleave(rep, dim=1)
    qh = q.view(1, seq, num_heads, d).transpose(1, 2)  # (1, nh, L, d)
    scores = torch.matmul(qh, kr.transpose(-1, -2)).float() * (1.0 / math.sqrt(d))  # (1, nh, L, T)
    q_pos = torch.arange(seq)[:, None] + start
    allowed = torch.arange(total)[None, :] <= q_pos  # (L, T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), vr)  # (1, nh, L, d)
    return out.transpose(1, 2).reshape(1, seq, num_heads * d), pk, pv


@gqa.register_fake
def _gqa_fake(q, k, v, past_k, past_v, seqlens_k, total_len, num_heads, kv_num_heads):
    return torch.empty_like(q), torch.empty_like(past_k), torch.empty_like(past_v)


def _gqa_schema():
    """The subset of the contrib op's signature this exporter emits (onnx has no schema for contrib ops;
    onnxruntime's own is the authority: inputs 0-6, outputs 0-2, attributes num_heads / kv_num_heads)."""
    from onnx.defs import OpSchema

    fp = OpSchema.FormalParameter
    ints = OpSchema.AttrType.INT
    return OpSchema(
        "GroupQueryAttention", MS_DOMAIN, 1,
        inputs=[fp("query", "T"), fp("key", "T"), fp("value", "T"), fp("past_key", "T"), fp("past_value", "T"),
                fp("seqlens_k", "M"), fp("total_sequence_length", "M")],
        outputs=[fp("output", "T"), fp("present_key", "T"), fp("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("num_heads", ints, ""), OpSchema.Attribute("kv_num_heads", ints, "")],
    )


def _gqa_onnx(q, k, v, past_k, past_v, seqlens_k, total_len, num_heads: int, kv_num_heads: int):
    import onnxscript

    op = onnxscript.values.Op(onnxscript.values.Opset(MS_DOMAIN, 1), "GroupQueryAttention", _gqa_schema())
    return op(q, k, v, past_k, past_v, seqlens_k, total_len, num_heads=num_heads, kv_num_heads=kv_num_heads)


TRANSLATIONS = {torch.ops.hulu.gqa.default: _gqa_onnx}


def gqa_attention(a: Attention, x, cos, sin, seqlens_k, total_len, past_k, past_v):
    """The reference Attention `a` (its weights, Qwen3 q/k norm and RoPE) with the cache write and the
    attention done by `hulu::gqa`. A function, not a module, so parameter names stay `layers.{i}.self_attn.*`."""
    b, seq, _ = x.shape
    d = a.head_dim
    q = a.q_proj(x).view(b, seq, a.heads, d)
    k = a.k_proj(x).view(b, seq, a.kv_heads, d)
    v = a.v_proj(x)  # (B, L, nkv*d): GQA takes BSH
    if a.qk_norm:
        q, k = a.q_norm(q), a.k_norm(k)
    c, s = cos[:, :, None], sin[:, :, None]  # (B, L, d) -> (B, L, 1, d): rotate in (B, L, n, d)
    if a.rope_in_fp32:
        q32, k32, c, s = q.float(), k.float(), c.float(), s.float()
        q = (q32 * c + rotate_half(q32) * s).to(x.dtype)
        k = (k32 * c + rotate_half(k32) * s).to(x.dtype)
    else:
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
    out, pk, pv = torch.ops.hulu.gqa(
        q.reshape(b, seq, a.heads * d), k.reshape(b, seq, a.kv_heads * d), v, past_k, past_v,
        seqlens_k, total_len, a.heads, a.kv_heads,
    )
    return a.o_proj(out), pk, pv


class DecoderGQAPiece(DecoderPiece):
    """inputs_embeds [1, L, H], position_ids [1, L], seqlens_k [1] int32, total_sequence_length [] int32,
    past k/v buffers [1, nkv, C, d] -> logits [1, V] f32, next_token [1] int64 (greedy argmax, so a device
    run can send 8 bytes to the host), present k/v [1, nkv, C, d] (the same buffers, rows [T-L, T) written)."""

    def forward(self, inputs_embeds, position_ids, seqlens_k, total_sequence_length, *past):  # type: ignore[override]
        x = inputs_embeds
        cos_dtype = torch.float32 if self.rope_fp32 else x.dtype
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, cos_dtype)  # (1, L, d)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            a, pk, pv = gqa_attention(
                layer.self_attn, layer.input_layernorm(x), cos, sin, seqlens_k, total_sequence_length,
                past[2 * i], past[2 * i + 1],
            )
            x = x + a
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            presents += [pk, pv]
        logits = self.lm_head(self.norm(x[:, -1])).float()  # (1, V)
        return (logits, torch.argmax(logits, dim=-1), *presents)
