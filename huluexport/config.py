"""The Hulu-Med model family as frozen dataclasses, the preset table of sizes, and operations on them.

Numbers come from docs/model.md §1 (each with its source there). A size is a row in SIZES;
there is no class per size. This module is the data model only: reading a checkpoint directory into a
HuluConfig is huluexport.checkpoint.from_checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from huluexport.errors import ConfigError

if TYPE_CHECKING:
    from hulurt.contract import Dims

# --------------------------------------------------------------------------------------------------
# Pieces of the configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style NaViT encoder (docs/model.md §1.2). Identical for all released sizes."""

    hidden: int = 1152
    intermediate: int = 4304
    layers: int = 27
    heads: int = 16
    patch: int = 14
    channels: int = 3
    eps: float = 1e-6
    rope_theta: float = 10000.0  # hard-coded upstream, not in config.json

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_dim(self) -> int:  # 3 * 14 * 14 = 588
        return self.channels * self.patch * self.patch

    def num_parameters(self) -> int:
        c, i = self.hidden, self.intermediate
        per_layer = 4 * (c * c + c) + (i * c + i) + (c * i + c) + 4 * c  # attn + fc1 + fc2 + 2 LayerNorms
        return (self.patch_dim * c + c) + self.layers * per_layer + 2 * c


@dataclass(frozen=True)
class ProjectorConfig:
    """`mlpNx_gelu`: N Linear layers with exact (erf) GELU between them (docs/model.md §1.3)."""

    depth: int = 2

    @property
    def type_name(self) -> str:
        return f"mlp{self.depth}x_gelu"

    def num_parameters(self, vision_hidden: int, hidden: int) -> int:
        return (vision_hidden * hidden + hidden) + (self.depth - 1) * (hidden * hidden + hidden)


@dataclass(frozen=True)
class DecoderConfig:
    """Qwen2.5 (qkv bias) or Qwen3 (q_norm/k_norm, explicit head_dim) decoder (docs/model.md §1.1, §8)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float = 1_000_000.0
    eps: float = 1e-6
    qkv_bias: bool = True  # Qwen2.5
    qk_norm: bool = False  # Qwen3
    tie_embeddings: bool = False
    max_position: int = 32768

    @property
    def flavor(self) -> str:
        return "qwen3" if self.qk_norm else "qwen2"

    def num_parameters(self, *, lm_head_stored: bool | None = None) -> int:
        h, d = self.hidden, self.head_dim
        q, kv = self.heads * d, self.kv_heads * d
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * d
        per_layer = attn + 3 * h * self.intermediate + 2 * h
        stored = (not self.tie_embeddings) if lm_head_stored is None else lm_head_stored
        return self.vocab * h + self.layers * per_layer + h + (self.vocab * h if stored else 0)

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V for every layer (docs/model.md §8.3): 2 * layers * kv_heads * head_dim * bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


@dataclass(frozen=True)
class ReductionConfig:
    """Inter-frame pixel-difference token pruning (docs/model.md §6.2), `use_token_compression`."""

    enabled: bool = True  # upstream HF default when the key is absent
    threshold: float = 0.1  # on normalised pixels in [-1, 1]
    min_tokens: int = 1  # per frame; the first tokens of a frame are forced on
    mode: str = "bf16"  # "bf16" reproduces upstream's bf16 rounding; "fp32" is the plain rule


@dataclass(frozen=True)
class TokenConfig:
    """Special token ids. Never hard-coded in the runtime: the bundle's manifest carries them."""

    image: int
    endoftext: int = 151643
    im_start: int = 151644
    im_end: int = 151645
    eos: tuple[int, ...] = (151645, 151643)


@dataclass(frozen=True)
class PreprocessConfig:
    """preprocessor_config.json values (docs/model.md §3.1) and processor defaults."""

    patch: int = 14
    min_tokens: int = 16
    max_tokens: int = 16384
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_merge: int = 1
    video_merge: int = 2
    fps: float = 1.0
    max_frames: int = 128


@dataclass(frozen=True)
class HuluConfig:
    name: str
    vision: VisionConfig
    decoder: DecoderConfig
    tokens: TokenConfig
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    torch_dtype: str = "bfloat16"

    def num_parameters(self, *, lm_head_stored: bool | None = None) -> int:
        return (
            self.vision.num_parameters()
            + self.projector.num_parameters(self.vision.hidden, self.decoder.hidden)
            + self.decoder.num_parameters(lm_head_stored=lm_head_stored)
        )

    def replace(self, **changes: object) -> HuluConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Presets (docs/model.md §1.1 and §11)
# --------------------------------------------------------------------------------------------------

_QWEN2_TOKENS = TokenConfig(image=151665)  # Qwen2.5-based 7B / 32B
_QWEN3_TOKENS = TokenConfig(image=151669)  # Qwen3-based 4B / 14B

# Tiny configs keep every structural feature (GQA, qkv bias or qk-norm, head_dim != hidden/heads for Qwen3,
# patch 14 so preprocessing runs unchanged). Their token ids are those of the locally trained tiny tokenizer
# written by `huluexport init-checkpoint`; the checkpoint's config.json is the authority.
TINY_VISION = VisionConfig(hidden=64, intermediate=96, layers=2, heads=4)
TINY_TOKENS = TokenConfig(image=290, endoftext=286, im_start=287, im_end=288, eos=(288, 286))

SIZES: dict[str, HuluConfig] = {
    "tiny": HuluConfig(
        name="tiny",
        vision=TINY_VISION,
        decoder=DecoderConfig(
            hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=320,
            qkv_bias=True, qk_norm=False, tie_embeddings=False, max_position=4096,
        ),
        tokens=TINY_TOKENS,
    ),
    "tiny-qwen3": HuluConfig(
        name="tiny-qwen3",
        vision=TINY_VISION,
        decoder=DecoderConfig(
            hidden=48, intermediate=96, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=320,
            rope_theta=5_000_000.0, qkv_bias=False, qk_norm=True, tie_embeddings=True, max_position=4096,
        ),
        tokens=TINY_TOKENS,
    ),
    "4b": HuluConfig(
        name="4b",
        vision=VisionConfig(),
        decoder=DecoderConfig(
            hidden=2560, intermediate=9728, layers=36, heads=32, kv_heads=8, head_dim=128, vocab=151936,
            rope_theta=5_000_000.0, qkv_bias=False, qk_norm=True, tie_embeddings=True, max_position=262144,
        ),
        tokens=_QWEN3_TOKENS,
        reduction=ReductionConfig(enabled=False),  # the 4B config.json ships with it off
    ),
    "7b": HuluConfig(
        name="7b",
        vision=VisionConfig(),
        decoder=DecoderConfig(
            hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128, vocab=152064,
            qkv_bias=True, qk_norm=False, tie_embeddings=False, max_position=32768,
        ),
        tokens=_QWEN2_TOKENS,
    ),
    "14b": HuluConfig(
        name="14b",
        vision=VisionConfig(),
        decoder=DecoderConfig(
            hidden=5120, intermediate=17408, layers=40, heads=40, kv_heads=8, head_dim=128, vocab=151936,
            qkv_bias=False, qk_norm=True, tie_embeddings=False, max_position=40960,
        ),
        tokens=_QWEN3_TOKENS,
    ),
    "32b": HuluConfig(
        name="32b",
        vision=VisionConfig(),
        decoder=DecoderConfig(
            hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, head_dim=128, vocab=152064,
            qkv_bias=True, qk_norm=False, tie_embeddings=False, max_position=32768,
        ),
        tokens=_QWEN2_TOKENS,
    ),
}


def preset(size: str) -> HuluConfig:
    try:
        return SIZES[size]
    except KeyError:
        raise ConfigError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}") from None


def slice_layers(cfg: HuluConfig, layers: int | None, vision_layers: int | None = None) -> HuluConfig:
    """The shallow slice of `cfg` that `build --layers N` exports and `init-checkpoint --layers N` writes.

    One rule everywhere: N must be in 1..decoder.layers; the decoder keeps its first N layers and the vision
    encoder its first min(N, vision.layers) (the vision tower of every size has 27 layers, decoders 28-64).
    `vision_layers` (build --vision-layers) sets the tower's depth on its own, e.g. a 4-layer decoder slice with
    the full 27-layer tower. Widths are unchanged. None, None returns cfg as it is.
    """
    if vision_layers is not None:
        if (isinstance(vision_layers, bool) or not isinstance(vision_layers, int)
                or not 1 <= vision_layers <= cfg.vision.layers):
            raise ConfigError(f"--vision-layers {vision_layers}: expected 1..{cfg.vision.layers} for {cfg.name}")
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, layers=vision_layers))
    if layers is None:
        return cfg
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= cfg.decoder.layers:
        raise ConfigError(f"--layers {layers}: expected 1..{cfg.decoder.layers} for {cfg.name}")
    vis = cfg.vision.layers if vision_layers is not None else min(layers, cfg.vision.layers)
    return cfg.replace(
        decoder=dataclasses.replace(cfg.decoder, layers=layers),
        vision=dataclasses.replace(cfg.vision, layers=vis),
    )


def to_dims(cfg: HuluConfig, act_dtype: str = "float32") -> Dims:
    """The contract's static numbers for one model and one bundle act dtype (the manifest's `dims`)."""
    from hulurt.contract import Dims

    return Dims(
        hidden=cfg.decoder.hidden,
        vocab=cfg.decoder.vocab,
        layers=cfg.decoder.layers,
        kv_heads=cfg.decoder.kv_heads,
        head_dim=cfg.decoder.head_dim,
        vision_head_dim=cfg.vision.head_dim,
        patch_dim=cfg.vision.patch_dim,
        act_dtype=act_dtype,
    )
