"""VisionPiece / EmbedPiece / DecoderPiece: nn.Modules whose forward() is exactly the contract's piece I/O.

They wrap the reference modules (parameter names stay the reference names, minus the piece's prefix in
PIECE_PREFIX) and add only what the contract needs: frame-grouped patches, the in-order scatter of visual
rows, a flat KV list and last-position logits. `to_precision` makes the fp16 variant with fp32 islands.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from huluexport.config import HuluConfig
from huluexport.reference.decoder import Attention, RMSNorm, causal_mask, rope_cos_sin
from huluexport.reference.model import HuluMed
from huluexport.reference.projector import Projector
from huluexport.reference.vision import VisionEncoder, merge_groups

# piece name -> (prefix inside the piece, prefix in reference.model.HuluMed)
PIECE_PREFIX: dict[str, tuple[tuple[str, str], ...]] = {
    "vision": (("vision_encoder.", "vision_encoder."), ("mm_projector.", "mm_projector.")),
    "embed": (("embed_tokens.", "decoder.embed_tokens."),),
    "decoder": (("layers.", "decoder.layers."), ("norm.", "decoder.norm."), ("lm_head.", "decoder.lm_head.")),
}
PIECE_PREFIX["decoder_gqa"] = PIECE_PREFIX["decoder"]  # the GPU decoder form (export/gqa.py): same weights
TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16}


def reference_name(piece: str, name: str) -> str:
    """Parameter name inside a piece -> reference (HuluMed state dict) name."""
    for inner, ref in PIECE_PREFIX[piece]:
        if name.startswith(inner):
            return ref + name[len(inner) :]
    raise KeyError(f"{piece} parameter {name!r} has no reference name")


class VisionPiece(nn.Module):
    """pixel_patches [T, G, g, 588] + rope_cos/sin [G*g, dv] -> visual_embeds [T, G, H].

    g = merge_group = m*m (1: images, merge is the identity; 4: video/3-D, 2x2 mean, docs/model.md §4.6).
    """

    def __init__(self, vision_encoder: VisionEncoder, mm_projector: Projector) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.mm_projector = mm_projector

    def forward(
        self, pixel_patches: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> torch.Tensor:
        t, g, mg, p = pixel_patches.shape
        x = pixel_patches.reshape(t, g * mg, p)  # (T, G, g, 588) -> (T, n, 588), merge-grouped token order
        h = self.vision_encoder(x, rope_cos, rope_sin)  # (T, n, Cv)
        h = merge_groups(h.reshape(t, g, mg, h.shape[-1]))  # (T, n, Cv) -> (T, G, g, Cv) -> (T, G, Cv)
        return self.mm_projector(h)  # (T, G, H)


class EmbedPiece(nn.Module):
    """input_ids [1, L] + visual_embeds [n_visual, H] -> inputs_embeds [1, L, H].

    Rows at image-token positions are replaced, in order, by the visual rows (docs/model.md §5.3). Sketch:

        ids --Equal(image)--> is_img --CumSum-1--> slot ---------------------------.
        visual_embeds --Concat(zero row)--> table [n_visual+1, H] --Gather(slot or n_visual)--> vis_rows
        ids --Gather(embed_tokens)--> text_rows ----------------- Where(is_img, vis_rows, text_rows) --> out

    The appended zero row keeps the Gather valid when n_visual = 0 (text only).
    """

    def __init__(self, embed_tokens: nn.Embedding, image_token_id: int) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.image_token_id = int(image_token_id)

    def forward(self, input_ids: torch.Tensor, visual_embeds: torch.Tensor) -> torch.Tensor:
        text = self.embed_tokens(input_ids)  # (1, L, H)
        is_img = input_ids == self.image_token_id  # (1, L)
        slot = torch.cumsum(is_img.to(torch.int64), dim=1) - 1  # (1, L): k-th image id -> visual row k
        n_visual = visual_embeds.shape[0]
        slot = torch.where(is_img, slot, torch.full_like(slot, 0) + n_visual)
        table = torch.cat(
            [visual_embeds.to(text.dtype), visual_embeds.new_zeros(1, visual_embeds.shape[1])], 0
        )
        vis = table[slot[0]][None]  # (n_visual + 1, H) gathered -> (L, H) -> (1, L, H)
        return torch.where(is_img[..., None], vis, text)


class DecoderPiece(nn.Module):
    """inputs_embeds [1, L, H], position_ids [1, L], past k/v per layer [1, nkv, P, d]
    -> logits [1, V] (last position, float32), present k/v per layer [1, nkv, P+L, d].

    One graph serves prefill (P = 0: empty past tensors) and decode (L = 1).
    """

    def __init__(self, decoder: nn.Module, rope_fp32: bool = False) -> None:
        super().__init__()
        self.cfg = decoder.cfg
        self.layers = decoder.layers
        self.norm = decoder.norm
        self.lm_head = decoder.lm_head
        self.rope_fp32 = rope_fp32

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        x = inputs_embeds
        cos_dtype = torch.float32 if self.rope_fp32 else x.dtype
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, cos_dtype)  # (1, L, d)
        mask = causal_mask(x.shape[1], past[0].shape[2], x.device)  # (L, P + L) additive fp32
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, cos, sin, mask, (past[2 * i], past[2 * i + 1]))
            presents += [k, v]
        h = self.norm(x[:, -1])  # (1, L, H) -> (1, H): only the last position reaches lm_head
        return (self.lm_head(h).float(), *presents)


def make_pieces(
    model: HuluMed, decoder_forms: tuple[str, ...] = ("v1-concat",), max_context: int | None = None
) -> dict[str, nn.Module]:
    """The pieces sharing the model's modules (no copies): vision, embed and one decoder per form
    (hulurt.contract.DECODER_FORMS: "v1-concat" -> decoder, "gqa-static" -> decoder_gqa). `max_context`: the
    bundle's (its positions are 0..max_context-1), the rows of decoder_gqa's RoPE tables."""
    cfg: HuluConfig = model.cfg
    out: dict[str, nn.Module] = {
        "vision": VisionPiece(model.vision_encoder, model.mm_projector).eval(),
        "embed": EmbedPiece(model.decoder.embed_tokens, cfg.tokens.image).eval(),
    }
    if "v1-concat" in decoder_forms:
        out["decoder"] = DecoderPiece(model.decoder).eval()
    if "gqa-static" in decoder_forms:
        from huluexport.export.gqa import DecoderGQAPiece

        out["decoder_gqa"] = DecoderGQAPiece(model.decoder, rope_rows=max_context).eval()
    return out


# --------------------------------------------------------------------------------------------------
# Precision: fp16 with fp32 islands (norms, softmax, RoPE)
# --------------------------------------------------------------------------------------------------

COMPUTE = {
    "fp32": {
        "matmul": "float32",
        "norms": "float32",
        "softmax": "float32",
        "rope": "float32",
        "io": "float32",
    },
    "fp16": {
        "matmul": "float16",
        "norms": "float32",
        "softmax": "float32",
        "rope": "float32",
        "io": "float16",
    },
}


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (fp32 weights) on any input dtype; the result is cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


def rms_norm_fp32(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """w * x / sqrt(mean(x^2) + eps) over the last axis, all in fp32, rounded once to x's dtype (the fp16
    pieces' norm island; onnxruntime's SimplifiedLayerNormalization with stash_type fp32 in export/gqa.py)."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (weight.float() * y).to(x.dtype)


class Fp32RMSNorm(RMSNorm):
    """RMSNorm whose weight multiply also stays in fp32 (fp32 weight); the result is cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_fp32(x, self.weight, self.eps)


class Fp32RopeAttention(Attention):
    """The reference attention with RoPE applied in fp32 (cos/sin arrive in fp32) and cast back."""

    rope_in_fp32 = True


_ISLANDS: tuple[tuple[type, type], ...] = (
    (nn.LayerNorm, Fp32LayerNorm),
    (RMSNorm, Fp32RMSNorm),
    (Attention, Fp32RopeAttention),
)


def to_precision(piece: nn.Module, precision: str, copy_first: bool = True) -> nn.Module:
    """fp32: the piece as is. fp16: a half copy whose norms keep fp32 weights and compute in fp32, whose
    decoder RoPE runs in fp32; softmax is fp32 in the reference already. Parameter names are unchanged."""
    if precision == "fp32":
        return piece
    if precision != "fp16":
        raise ValueError(f"precision {precision!r}")
    out = copy.deepcopy(piece) if copy_first else piece
    out = out.half()
    for mod in out.modules():
        for base, island in _ISLANDS:
            # an island already: a module shared by two pieces (decoder and decoder_gqa) that `half()` just
            # made fp16 again when the second piece was converted in place
            if type(mod) is base or type(mod) is island:
                mod.__class__ = island
                if island in (Fp32LayerNorm, Fp32RMSNorm):
                    for p in mod.parameters(recurse=False):
                        p.data = p.data.float()
    if isinstance(out, DecoderPiece):
        out.rope_fp32 = True
    return out
