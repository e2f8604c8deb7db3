"""Qwen2.5 / Qwen3 decoder fed inputs_embeds, with a purely functional KV cache (traceable by torch.export).

Variants are config flags: qkv_bias (Qwen2.5), qk_norm + explicit head_dim (Qwen3), tied or stored lm_head.
Numerics follow docs/model.md §8.1 (transformers' Qwen2/Qwen3 modeling: RMSNorm casts back before the weight,
RoPE cos/sin cast to the activation dtype). Names equal the checkpoint's minus `model.` (lm_head stays).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from huluexport.config import DecoderConfig

KV = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)  # cast back to the input dtype before the weight


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [B, L] -> cos, sin [B, L, d], computed in fp32 then cast to the activation dtype."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (d/2,)
    ang = position_ids.float()[..., None] * inv_freq.to(position_ids.device)  # (B, L, d/2)
    emb = torch.cat([ang, ang], dim=-1)  # (B, L, d)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    rope_in_fp32 = False  # a class flag, not config: only the exporter's fp16 pieces set it
    # called with the unscaled q.k^T scores when set (huluexport/reference/ranges.py, per instance); never traced
    observe_qk: Callable[[torch.Tensor], None] | None = None

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        h, d = cfg.hidden, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, d
        self.q_proj = nn.Linear(h, cfg.heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, cfg.kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, cfg.kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.heads * d, h, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.eps)
            self.k_norm = RMSNorm(d, cfg.eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, past: KV | None
    ) -> tuple[torch.Tensor, KV]:
        b, seq, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, seq, self.heads, d)  # (B, L, nh*d) -> (B, L, nh, d)
        k = self.k_proj(x).view(b, seq, self.kv_heads, d)
        v = self.v_proj(x).view(b, seq, self.kv_heads, d)
        if self.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, L, n, d) -> (B, n, L, d)
        c, s = cos[:, None], sin[:, None]  # (B, L, d) -> (B, 1, L, d)
        if self.rope_in_fp32:  # export's fp16 graphs: rotate in fp32, cast back (cos/sin arrive in fp32)
            q32, k32, c, s = q.float(), k.float(), c.float(), s.float()
            q = (q32 * c + rotate_half(q32) * s).to(x.dtype)
            k = (k32 * c + rotate_half(k32) * s).to(x.dtype)
        else:  # transformers' order: cos/sin already cast to the activation dtype
            q = q * c + rotate_half(q) * s
            k = k * c + rotate_half(k) * s
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nkv, P + L, d)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        rep = self.heads // self.kv_heads
        kr = k.repeat_interleave(rep, dim=1)  # (B, nkv, T, d) -> (B, nh, T, d), GQA
        vr = v.repeat_interleave(rep, dim=1)
        qk = torch.matmul(q, kr.transpose(-1, -2))  # (B, nh, L, T), unscaled: held in the activation dtype
        if self.observe_qk is not None:
            self.observe_qk(qk)
        scores = qk * (1.0 / math.sqrt(d))
        probs = torch.softmax(scores.float() + mask, dim=-1).to(q.dtype)
        out = torch.matmul(probs, vr)  # (B, nh, L, d)
        out = out.transpose(1, 2).reshape(b, seq, self.heads * d)  # (B, nh, L, d) -> (B, L, nh*d)
        return self.o_proj(out), present


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, past: KV | None
    ) -> tuple[torch.Tensor, KV]:
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present


def causal_mask(
    q_len: int | torch.SymInt, past_len: int | torch.SymInt, device: torch.device
) -> torch.Tensor:
    """Additive fp32 mask [L, P + L]: query i (absolute P + i) sees keys 0..P + i."""
    q_idx = torch.arange(q_len, device=device) + past_len  # (L,)
    k_idx = torch.arange(past_len + q_len, device=device)  # (P + L,)
    allowed = k_idx[None, :] <= q_idx[:, None]  # (L, P + L)
    neg = torch.full_like(allowed, torch.finfo(torch.float32).min, dtype=torch.float32)
    return torch.where(allowed, torch.zeros_like(neg), neg)


class Decoder(nn.Module):
    """forward(inputs_embeds [B, L, H], position_ids [B, L], past list[(k, v)] each [B, nkv, P, d] | None)
    -> (logits [B, L, V] float32, present list[(k, v)] each [B, nkv, P + L, d])."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)

    def tie_weights(self) -> None:
        self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def hidden_states(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, past: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        x = inputs_embeds
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        past_len = 0 if past is None else past[0][0].shape[2]
        mask = causal_mask(x.shape[1], past_len, x.device)
        presents: list[KV] = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, cos, sin, mask, None if past is None else past[i])
            presents.append(present)
        return self.norm(x), presents

    def forward(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, past: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        h, presents = self.hidden_states(inputs_embeds, position_ids, past)
        return self.lm_head(h).float(), presents
