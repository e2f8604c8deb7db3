"""Vision encoder of Hulu-Med (SigLIP-NaViT, 2-D RoPE, per-frame attention, post-LN) and the m x m merge.

Export-shaped: a batch of frames of one grid [T, n, 588] with host RoPE tables [n, dv] (hulurt.rope).
Ported in our own words from ZJUI-AI4H/Hulu-Med src/hulumed/model/hulumed_encoder/modeling_hulumed_encoder.py
(docs/model.md §4). Parameter names equal the checkpoint's minus `model.vision_encoder.`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from huluexport.config import VisionConfig


class PatchEmbedding(nn.Module):
    """Conv2d(3 -> C, kernel = stride = P) as a matmul. The weight keeps its checkpoint shape [C, 3, P, P]."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.hidden, cfg.channels, cfg.patch, cfg.patch))
        self.bias = nn.Parameter(torch.empty(cfg.hidden))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(self.weight.shape[0], -1)  # (C, 3, P, P) -> (C, 588), the patch-vector order
        return F.linear(patches.to(w.dtype), w, self.bias)  # (..., 588) -> (..., C)


class Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(cfg)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class VisionAttention(nn.Module):
    observe_qk: Callable[[torch.Tensor], None] | None = None  # as decoder.Attention.observe_qk

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        c = cfg.hidden
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)
        self.v_proj = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        t, n, c = x.shape
        q = self.q_proj(x).view(t, n, self.heads, self.head_dim)  # (T, n, C) -> (T, n, nh, dv)
        k = self.k_proj(x).view(t, n, self.heads, self.head_dim)
        v = self.v_proj(x).view(t, n, self.heads, self.head_dim)
        # RoPE in fp32 (docs/model.md §4.4), cast back to the working dtype
        cos32 = cos.float()[None, :, None, :]  # (n, dv) -> (1, n, 1, dv)
        sin32 = sin.float()[None, :, None, :]
        q32, k32 = q.float(), k.float()
        q = (q32 * cos32 + rotate_half(q32) * sin32).to(x.dtype)
        k = (k32 * cos32 + rotate_half(k32) * sin32).to(x.dtype)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (T, n, nh, dv) -> (T, nh, n, dv)
        # dense attention inside each frame (batch dim = frames): the block-diagonal mask of docs/model.md §4.3
        qk = torch.matmul(q, k.transpose(-1, -2))  # (T, nh, n, n), unscaled: held in the activation dtype
        if self.observe_qk is not None:
            self.observe_qk(qk)
        scores = qk * (1.0 / math.sqrt(self.head_dim))
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = torch.matmul(probs, v)  # (T, nh, n, dv)
        out = out.transpose(1, 2).reshape(t, n, c)  # (T, nh, n, dv) -> (T, n, C)
        return self.out_proj(out)


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.intermediate)
        self.fc2 = nn.Linear(cfg.intermediate, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # gelu_pytorch_tanh (docs/model.md §10, trap 11)


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cos, sin)
        return x + self.mlp(self.layer_norm2(x))


class VisionLayers(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.layers))


class VisionEncoder(nn.Module):
    """patches [T, n, 588] (one grid, frames as batch) + cos/sin [n, dv] -> post-LN hidden [T, n, C]."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = VisionLayers(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, patches: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(patches)  # (T, n, 588) -> (T, n, C)
        for layer in self.encoder.layers:
            x = layer(x, cos, sin)
        return self.post_layernorm(x)


def merge_groups(hidden: torch.Tensor) -> torch.Tensor:
    """[T, n_groups, merge_group, C] -> [T, n_groups, C]: mean of each merge group in fp32, rounded once.

    For m = 2 this is bilinear(align_corners=False) downsampling by 2 (docs/model.md §4.6, §9.2): the 2x2 block
    of a merged token is contiguous in the token order. For m = 1 (merge_group 1) it is the identity.
    """
    return hidden.float().mean(dim=2).to(hidden.dtype)


def merge(hidden: torch.Tensor, merge_size: int) -> torch.Tensor:
    """[T, n, C] in merge-grouped token order -> [T, n / m^2, C] in raster order of the merged grid."""
    t, n, c = hidden.shape
    g = merge_size * merge_size
    return merge_groups(hidden.reshape(t, n // g, g, c))  # (T, n, C) -> (T, nb, m*m, C)
