"""Vision reference: per-frame separability, merge == bilinear, patch embed == conv (docs/model.md §9.2, §11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hulurt.rope import vision_rope

from huluexport.checkpoint.random_weights import random_state
from huluexport.config import SIZES
from huluexport.reference.model import HuluMed
from huluexport.reference.vision import merge
from huluexport.tolerances import get


@pytest.fixture(scope="module")
def model() -> HuluMed:
    cfg = SIZES["tiny"]
    m = HuluMed(cfg)
    m.load_state_dict(random_state(cfg, seed=5), strict=True)
    return m.eval()


def _rope(gh: int, gw: int, m: int, dv: int) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = vision_rope(gh, gw, m, dv)
    return torch.from_numpy(np.array(cos)), torch.from_numpy(np.array(sin))


def _rotate_half(z: torch.Tensor) -> torch.Tensor:
    h = z.shape[-1] // 2
    return torch.cat([-z[..., h:], z[..., :h]], -1)


def test_per_frame_batch_equals_frames_alone_bitwise(model: HuluMed) -> None:
    gh, gw, m = 4, 6, 2
    x = torch.rand(3, gh * gw, 588) * 2 - 1
    cos, sin = _rope(gh, gw, m, model.cfg.vision.head_dim)
    with torch.no_grad():
        batched = model.vision_encoder(x, cos, sin)
        alone = torch.cat([model.vision_encoder(x[t : t + 1], cos, sin) for t in range(3)])
    assert float(batched.std()) > 1e-2
    assert torch.equal(batched, alone)


def test_packed_block_diagonal_equals_batched(model: HuluMed) -> None:
    """One packed sequence of T frames with a block-diagonal mask == the batch-of-frames form."""
    gh, gw, m, t = 4, 4, 2, 3
    n = gh * gw
    x = torch.rand(t, n, 588) * 2 - 1
    cos, sin = _rope(gh, gw, m, model.cfg.vision.head_dim)
    enc = model.vision_encoder
    with torch.no_grad():
        batched = enc(x, cos, sin)
        # packed: [1, T*n] tokens, attention restricted to each frame's block by an additive mask
        frame = torch.arange(t * n) // n
        block = torch.where(frame[:, None] == frame[None, :], 0.0, float("-inf"))  # (T*n, T*n)
        h = enc.embeddings(x.reshape(1, t * n, 588))
        cos_p, sin_p = cos.repeat(t, 1), sin.repeat(t, 1)  # coordinates restart per frame
        for layer in enc.encoder.layers:
            a = layer.self_attn
            y = layer.layer_norm1(h)
            heads, dv = a.heads, a.head_dim
            q = a.q_proj(y).view(1, t * n, heads, dv)
            k = a.k_proj(y).view(1, t * n, heads, dv)
            v = a.v_proj(y).view(1, t * n, heads, dv).transpose(1, 2)
            c, s = cos_p[None, :, None], sin_p[None, :, None]
            q = (q * c + _rotate_half(q) * s).transpose(1, 2)
            k = (k * c + _rotate_half(k) * s).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-1, -2) / dv**0.5 + block, dim=-1)
            o = (p @ v).transpose(1, 2).reshape(1, t * n, -1)
            h = h + a.out_proj(o)
            h = h + layer.mlp(layer.layer_norm2(h))
        packed = enc.post_layernorm(h).reshape(t, n, -1)
    err = float((packed - batched).abs().max())
    assert err <= get("vision", "fp32", "packed").max_abs, err


@pytest.mark.parametrize(("gh", "gw"), [(4, 6), (6, 2), (2, 2)])
def test_merge_equals_bilinear_align_corners_false(gh: int, gw: int) -> None:
    t, c, m = 2, 8, 2
    h = torch.rand(t, gh * gw, c) * 2 - 1  # merge-grouped token order, values in [-1, 1]
    got = merge(h, m)  # (T, nb, C)
    # un-permute to the image grid: (T, gh/m, gw/m, m, m, C) -> (T, gh, gw, C) -> (T, C, gh, gw)
    grid = h.view(t, gh // m, gw // m, m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(t, gh, gw, c)
    ref = F.interpolate(
        grid.permute(0, 3, 1, 2), size=(gh // m, gw // m), mode="bilinear", align_corners=False
    )
    ref = ref.permute(0, 2, 3, 1).reshape(t, -1, c)  # raster order of the merged grid
    assert float(ref.std()) > 1e-2
    assert float((got - ref).abs().max()) <= get("merge", "fp32", "bilinear").max_abs


def test_merge_m1_is_identity_and_bf16_rounds_once() -> None:
    h = torch.randn(2, 12, 8)
    assert torch.equal(merge(h, 1), h)
    hb = torch.randn(1, 16, 8).to(torch.bfloat16)
    expect = hb.float().view(1, 4, 4, 8).mean(2).to(torch.bfloat16)
    assert torch.equal(merge(hb, 2), expect)


def test_patch_embed_matmul_equals_conv(model: HuluMed) -> None:
    pe = model.vision_encoder.embeddings.patch_embedding
    x = torch.rand(10, 588) * 2 - 1
    with torch.no_grad():
        conv = F.conv2d(x.view(10, 3, 14, 14), pe.weight, pe.bias, stride=14).view(10, -1)
        err = float((pe(x) - conv).abs().max())
    assert float(conv.std()) > 1e-2
    assert err <= get("patch_embed", "fp32", "conv").max_abs, err


def test_vision_tower_contract_shapes(model: HuluMed) -> None:
    """pixel_patches [T, G, g, 588] + cos/sin [G*g, dv] -> [T, G, H] (hulurt.contract vision piece)."""
    gh, gw, m, t = 4, 6, 2, 2
    cos, sin = _rope(gh, gw, m, model.cfg.vision.head_dim)
    x = torch.rand(t, gh * gw // 4, 4, 588) * 2 - 1
    with torch.no_grad():
        out = model.vision_tower(x, cos, sin)
        direct = model.mm_projector(merge(model.vision_encoder(x.reshape(t, gh * gw, 588), cos, sin), m))
    assert out.shape == (t, 6, model.cfg.decoder.hidden)
    assert float(out.std()) > 1e-2
    assert torch.equal(out, direct)
