"""The GPU decoder form ("gqa-static", piece `decoder_gqa`): attention by `com.microsoft::GroupQueryAttention`
over KV buffers of a fixed capacity that the runtime allocates once and binds as both past and present.

The weights and the math are the reference's (huluexport/reference/decoder.py), cut into a few fused
onnxruntime operators per layer so that a decode step runs a few kernels per layer, not dozens (docs/gpu.md,
"Kernels per layer"):

    x, delta --SkipSimplifiedLayerNormalization--> h, x          (the residual add + the input norm)
    Qwen2.5: h --MatMul + Add (packed q/k/v)--> qkv --GroupQueryAttention (RoPE inside, at the cache rows)--> a
    Qwen3:   h --3 MatMul, q/k SimplifiedLayerNormalization, RotaryEmbedding at position_ids--> GroupQueryAttention
    a --MatMul (o)--> , x --SkipSimplifiedLayerNormalization--> h2, x --MLP--> delta (the next layer adds it)

GroupQueryAttention: q [1, L, nh*d] (or packed q/k/v), past k/v [1, nkv, C, d], seqlens_k [1] int32 (= T - 1),
total_sequence_length [] int32 -> out [1, L, nh*d], present k/v [1, nkv, C, d]. The new rows land at cache
positions [T - L, T); query row i attends keys 0..T - L + i. When the runtime binds past and present to the same
buffer, onnxruntime writes in place (its "past-present share buffer"), so a decode step (L = 1) has fixed shapes
and fixed addresses and can be replayed as a CUDA graph. docs/gpu.md describes the runtime side.

Tracing: each fused operator is a torch custom op (`hulu::gqa`, `hulu::gqa_rope`, `hulu::rms_norm`,
`hulu::add_rms_norm`, `hulu::rope`; eager implementations below, used by tests, and fake ones for the meta device)
that the ONNX exporter translates to the onnxruntime operator through `TRANSLATIONS`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from huluexport.export.pieces import DecoderPiece, rms_norm_fp32
from huluexport.reference.decoder import Attention, rope_cos_sin

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


def _op(name: str, domain: str, version: int, inputs, outputs, constraints, attributes):
    """An onnxscript Op for an onnxruntime operator, with the subset of its signature this exporter emits (onnx has
    no schema for onnxruntime's operators; onnxruntime's own is the authority). An input type given as a 1-tuple
    marks the input optional."""
    import onnxscript
    from onnx.defs import OpSchema

    fp = OpSchema.FormalParameter
    opt = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        name, domain, version,
        inputs=[fp(n, t[0], "", param_option=opt) if isinstance(t, tuple) else fp(n, t) for n, t in inputs],
        outputs=[fp(n, t) for n, t in outputs],
        type_constraints=constraints,
        attributes=[OpSchema.Attribute(n, kind, "") for n, kind in attributes],
    )
    return onnxscript.values.Op(onnxscript.values.Opset(domain, version), name, schema)


_FLOATS = ["tensor(float)", "tensor(float16)"]


def _gqa_op():
    """GroupQueryAttention, inputs 0-8 (key/value empty when q, k, v come packed; cos/sin tables with do_rotary),
    outputs 0-2."""
    from onnx.defs import OpSchema

    return _op(
        "GroupQueryAttention", MS_DOMAIN, 1,
        [("query", "T"), ("key", ("T",)), ("value", ("T",)), ("past_key", "T"), ("past_value", "T"),
         ("seqlens_k", "M"), ("total_sequence_length", "M"), ("cos_cache", ("T",)), ("sin_cache", ("T",))],
        [("output", "T"), ("present_key", "T"), ("present_value", "T")],
        [("T", _FLOATS, ""), ("M", ["tensor(int32)"], "")],
        [(n, OpSchema.AttrType.INT) for n in ("num_heads", "kv_num_heads", "do_rotary", "rotary_interleaved")],
    )


def _gqa_onnx(q, k, v, past_k, past_v, seqlens_k, total_len, num_heads: int, kv_num_heads: int):
    return _gqa_op()(q, k, v, past_k, past_v, seqlens_k, total_len, num_heads=num_heads, kv_num_heads=kv_num_heads)


@torch.library.custom_op("hulu::gqa_rope", mutates_args=())
def gqa_rope(
    qkv: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_len: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`hulu::gqa` on q, k, v packed in one tensor [1, L, (nh + 2 nkv) d], RoPE of q and k done inside at the
    cache rows [T - L, T) (GroupQueryAttention with do_rotary): the rows a compacted sequence's positions are."""
    _, seq, _ = qkv.shape
    d = past_k.shape[-1]
    q, k, v = qkv.split([num_heads * d, kv_num_heads * d, kv_num_heads * d], dim=-1)
    total = int(seqlens_k.reshape(-1)[0]) + 1
    pos = torch.arange(total - seq, total, dtype=torch.int64)[None]
    q = torch.ops.hulu.rope(q.contiguous(), pos, cos_cache, sin_cache)
    k = torch.ops.hulu.rope(k.contiguous(), pos, cos_cache, sin_cache)
    return torch.ops.hulu.gqa(q, k, v.contiguous(), past_k, past_v, seqlens_k, total_len, num_heads, kv_num_heads)


@gqa_rope.register_fake
def _gqa_rope_fake(qkv, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache, num_heads, kv_num_heads):
    out = qkv.new_empty((qkv.shape[0], qkv.shape[1], num_heads * past_k.shape[-1]))
    return out, torch.empty_like(past_k), torch.empty_like(past_v)


def _gqa_rope_onnx(qkv, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache, num_heads: int,
                   kv_num_heads: int):
    return _gqa_op()(qkv, None, None, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache, num_heads=num_heads,
              kv_num_heads=kv_num_heads, do_rotary=1, rotary_interleaved=0)


# --------------------------------------------------------------------------------------------------
# RMSNorm and RoPE as one onnxruntime op each (the decode step's kernel count; docs/gpu.md "Kernels per layer")
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("hulu::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = w * x / sqrt(mean(x^2) + eps) over the last axis, computed in fp32 and rounded once to x's dtype:
    onnxruntime's SimplifiedLayerNormalization (stash_type fp32). In fp32 it is the reference RMSNorm."""
    return rms_norm_fp32(x, weight, eps)


@rms_norm.register_fake
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x)


@torch.library.custom_op("hulu::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + skip), x + skip): the residual add and the next norm in one op, onnxruntime's
    SkipSimplifiedLayerNormalization (outputs 0 and 3). The sum is rounded to x's dtype first, as the
    reference's residual stream is."""
    s = x + skip
    return rms_norm_fp32(s, weight, eps), s


@add_rms_norm.register_fake
def _add_rms_norm_fake(x, skip, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("hulu::rope", mutates_args=())
def rope(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [1, L, n*d] at `position_ids` [1, L] from cos/sin tables [R, d/2] (x's dtype):
    onnxruntime's RotaryEmbedding (interleaved=0). The tables hold the reference's cos/sin rows 0..R-1."""
    b, seq, hd = x.shape
    half = cos_cache.shape[-1]
    xh = x.view(b, seq, hd // (2 * half), 2 * half)  # (B, L, n, d)
    c = cos_cache[position_ids][:, :, None]  # (B, L, 1, d/2)
    s = sin_cache[position_ids][:, :, None]
    x1, x2 = xh[..., :half], xh[..., half:]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)  # x * cos + rotate_half(x) * sin, per half
    return out.reshape(b, seq, hd)


@rope.register_fake
def _rope_fake(x, position_ids, cos_cache, sin_cache):
    return torch.empty_like(x)


def _rms_norm_onnx(x, weight, eps: float):
    """ORT registers SimplifiedLayerNormalization in the ONNX domain (since version 1; no ONNX schema)."""
    from onnx.defs import OpSchema

    from huluexport.export.onnx import OPSET

    op = _op(
        "SimplifiedLayerNormalization", "", OPSET, [("X", "T"), ("scale", "V")], [("Y", "V")],
        [("T", _FLOATS, ""), ("V", _FLOATS, "")],
        [("axis", OpSchema.AttrType.INT), ("epsilon", OpSchema.AttrType.FLOAT), ("stash_type", OpSchema.AttrType.INT)],
    )
    return op(x, weight, axis=-1, epsilon=eps, stash_type=1)


def _add_rms_norm_onnx(x, skip, weight, eps: float):
    """Outputs 1 and 2 (mean, inverse std) are not used; passes/drop_unused_outputs.py unnames them, as
    onnxruntime's own fusion leaves them."""
    from onnx.defs import OpSchema

    op = _op(
        "SkipSimplifiedLayerNormalization", MS_DOMAIN, 1, [("input", "T"), ("skip", "T"), ("gamma", "T")],
        [("output", "T"), ("mean", "U"), ("inv_std_var", "U"), ("input_skip_bias_sum", "T")],
        [("T", _FLOATS, ""), ("U", ["tensor(float)"], "")], [("epsilon", OpSchema.AttrType.FLOAT)],
    )
    out, _, _, total = op(x, skip, weight, epsilon=eps, _num_outputs=4)
    return out, total


def _rope_onnx(x, position_ids, cos_cache, sin_cache):
    from onnx.defs import OpSchema

    op = _op(
        "RotaryEmbedding", MS_DOMAIN, 1,
        [("input", "T"), ("position_ids", "M"), ("cos_cache", "T"), ("sin_cache", "T")], [("output", "T")],
        [("T", _FLOATS, ""), ("M", ["tensor(int64)"], "")], [("interleaved", OpSchema.AttrType.INT)],
    )
    return op(x, position_ids, cos_cache, sin_cache, interleaved=0)


TRANSLATIONS = {
    torch.ops.hulu.gqa.default: _gqa_onnx,
    torch.ops.hulu.gqa_rope.default: _gqa_rope_onnx,
    torch.ops.hulu.rms_norm.default: _rms_norm_onnx,
    torch.ops.hulu.add_rms_norm.default: _add_rms_norm_onnx,
    torch.ops.hulu.rope.default: _rope_onnx,
}


def norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference RMSNorm `module` as one `hulu::rms_norm` (its fp32 island weight cast to the activation
    dtype: a Cast of an initializer that onnxruntime folds when the session opens)."""
    return torch.ops.hulu.rms_norm(x, module.weight.to(x.dtype), float(module.eps))


def add_norm(module: torch.nn.Module, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(module(x + skip), x + skip) as one `hulu::add_rms_norm`."""
    return torch.ops.hulu.add_rms_norm(x, skip, module.weight.to(x.dtype), float(module.eps))


def rope_tables(
    rows: int, head_dim: int, theta: float, dtype: torch.dtype, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [rows, d/2] of the reference's rope_cos_sin at positions 0..rows-1 (fp32, then cast). Traced as a
    constant subgraph (Range, Mul, Cos, Sin): onnxruntime folds it when the session opens; the bundle carries no
    table."""
    pos = torch.arange(rows, dtype=torch.int64, device=device)[None]
    cos, sin = rope_cos_sin(pos, head_dim, theta, dtype)  # (1, R, d)
    return cos[0, :, : head_dim // 2], sin[0, :, : head_dim // 2]


def qkv_projection(a: Attention, x: torch.Tensor) -> torch.Tensor:
    """q, k and v of the reference Attention `a` as one Linear [1, L, (nh + 2 nkv) d]: the exporter traces the
    concatenation of the three weights (and biases), passes/fold_weight_concats.py stores it as one initializer."""
    w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
    b = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
    return F.linear(x, w, b)


def gqa_attention(a: Attention, x, cos_cache, sin_cache, position_ids, seqlens_k, total_len, past_k, past_v):
    """The reference Attention `a` (its weights, Qwen3 q/k norm) with the cache write and the attention as one
    GroupQueryAttention. Qwen2.5: one packed q/k/v projection and RoPE inside the attention op (`hulu::gqa_rope`,
    positions = cache rows). Qwen3, whose q/k norms sit between projection and RoPE: three projections, the norms,
    `hulu::rope` at `position_ids`, `hulu::gqa`. A function, not a module: parameter names stay
    `layers.{i}.self_attn.*`."""
    b, seq, _ = x.shape
    d = a.head_dim
    if not a.qk_norm:
        out, pk, pv = torch.ops.hulu.gqa_rope(
            qkv_projection(a, x), past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache, a.heads, a.kv_heads
        )
        return a.o_proj(out), pk, pv
    q = norm(a.q_norm, a.q_proj(x).view(b, seq, a.heads, d)).reshape(b, seq, a.heads * d)
    k = norm(a.k_norm, a.k_proj(x).view(b, seq, a.kv_heads, d)).reshape(b, seq, a.kv_heads * d)
    q = torch.ops.hulu.rope(q, position_ids, cos_cache, sin_cache)
    k = torch.ops.hulu.rope(k, position_ids, cos_cache, sin_cache)
    out, pk, pv = torch.ops.hulu.gqa(q, k, a.v_proj(x), past_k, past_v, seqlens_k, total_len, a.heads, a.kv_heads)
    return a.o_proj(out), pk, pv


class GQALayer(torch.nn.Module):
    """One decoder layer of the gqa-static form. Its children are the reference layer's own modules (shared
    with the v1 piece), so parameter names and the `layers.{i}` scopes (passes/replicate_layers.py) are those
    of the reference.

    The residual stream travels as (x, delta): the previous layer's MLP output `delta` is added to x by this
    layer's input norm (SkipSimplifiedLayerNormalization), and the attention output by the post-attention norm,
    so no residual Add runs alone. Layer 0 receives delta None (plain norm)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.input_layernorm = layer.input_layernorm
        self.self_attn = layer.self_attn
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.mlp = layer.mlp

    def forward(self, x, delta, cos_cache, sin_cache, position_ids, seqlens_k, total_len, past_k, past_v):
        if delta is None:
            h = norm(self.input_layernorm, x)
        else:
            h, x = add_norm(self.input_layernorm, x, delta)
        a, pk, pv = gqa_attention(
            self.self_attn, h, cos_cache, sin_cache, position_ids, seqlens_k, total_len, past_k, past_v
        )
        h, x = add_norm(self.post_attention_layernorm, x, a)
        return x, self.mlp(h), pk, pv


class DecoderGQAPiece(DecoderPiece):
    """inputs_embeds [1, L, H], position_ids [1, L], seqlens_k [1] int32, total_sequence_length [] int32,
    past k/v buffers [1, nkv, C, d] -> logits [1, V] f32, next_token [1] int64 (greedy argmax, so a device
    run can send 8 bytes to the host), present k/v [1, nkv, C, d] (the same buffers, rows [T-L, T) written).

    `rope_rows`: rows of the RoPE tables, the largest position + 1 (the bundle's max_context; default the
    model's max_position). Each layer is a few fused onnxruntime operators (GQALayer, gqa_attention; docs/gpu.md
    "Kernels per layer"), in the activation dtype (fp32 inside the norms)."""

    def __init__(self, decoder: torch.nn.Module, rope_rows: int | None = None) -> None:
        super().__init__(decoder)
        self.layers = torch.nn.ModuleList(GQALayer(layer) for layer in decoder.layers)
        self.rope_rows = int(rope_rows or self.cfg.max_position)

    def forward(self, inputs_embeds, position_ids, seqlens_k, total_sequence_length, *past):  # type: ignore[override]
        x = inputs_embeds
        cos, sin = rope_tables(self.rope_rows, self.cfg.head_dim, self.cfg.rope_theta, x.dtype, x.device)
        presents: list[torch.Tensor] = []
        delta = None
        for i, layer in enumerate(self.layers):
            x, delta, pk, pv = layer(x, delta, cos, sin, position_ids, seqlens_k, total_sequence_length,
                                     past[2 * i], past[2 * i + 1])
            presents += [pk, pv]
        h, _ = add_norm(self.norm, x, delta)  # (1, L, H): every row (cheap), then the last one
        logits = self.lm_head(h[:, -1]).float()  # (1, V)
        return (logits, torch.argmax(logits, dim=-1), *presents)
