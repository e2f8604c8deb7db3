"""The Hulu-Med model family as frozen dataclasses, and the preset table of sizes.

Numbers come from ARCHITECTURE.md section 1 (each with its source there). A size is a row in SIZES;
there is no class per size. `from_checkpoint(dir)` (below) reads a real checkpoint directory.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huluexport.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from hulurt.contract import Dims

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Pieces of the configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style NaViT encoder (ARCHITECTURE.md 1.2). Identical for all released sizes."""

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
    """`mlpNx_gelu`: N Linear layers with exact (erf) GELU between them (ARCHITECTURE.md 1.3)."""

    depth: int = 2

    @property
    def type_name(self) -> str:
        return f"mlp{self.depth}x_gelu"

    def num_parameters(self, vision_hidden: int, hidden: int) -> int:
        return (vision_hidden * hidden + hidden) + (self.depth - 1) * (hidden * hidden + hidden)


@dataclass(frozen=True)
class DecoderConfig:
    """Qwen2.5 (qkv bias) or Qwen3 (q_norm/k_norm, explicit head_dim) decoder (ARCHITECTURE.md 1.1, 8)."""

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
        """K and V for every layer (ARCHITECTURE.md 8.3): 2 * layers * kv_heads * head_dim * bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


@dataclass(frozen=True)
class ReductionConfig:
    """Inter-frame pixel-difference token pruning (ARCHITECTURE.md 6.2), `use_token_compression`."""

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
    """preprocessor_config.json values (ARCHITECTURE.md 3.1) and processor defaults."""

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
# Presets (ARCHITECTURE.md 1.1 and 11.1)
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


def to_dims(cfg: HuluConfig, act_dtype: str = "float32") -> Dims:
    """The contract's static numbers for one model and one bundle act dtype."""
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


# --------------------------------------------------------------------------------------------------
# Reading a checkpoint directory (ARCHITECTURE.md 2.1, 2.2, 2.4)
# --------------------------------------------------------------------------------------------------

_VE = "model.vision_encoder."


def from_checkpoint(ckpt_dir: str | Path) -> HuluConfig:
    """HuluConfig of a Hulu-Med checkpoint directory, HF-version or original format.

    Architecture numbers come from config.json, cross-checked with (or, where absent, inferred from) tensor
    shapes. Qwen2 vs Qwen3 is decided by the presence of q_norm weights, never by model_type. Every default
    used in place of a missing value is logged.
    """
    from huluexport.reference.weights import _read_json, scan

    d = Path(ckpt_dir)
    cfg_path = d / "config.json"
    raw = _read_json(cfg_path, "config.json")
    shapes = {name: e.shape for name, e in scan(d).items()}
    src = _Source(cfg_path, raw)

    def shape_of(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise CheckpointError(
                f"{d}: tensor {name!r} not found; needed to read the architecture", file=d, tensor=name
            )
        return shapes[name]

    # ---- decoder
    qwen3 = "model.layers.0.self_attn.q_norm.weight" in shapes
    qkv_bias = "model.layers.0.self_attn.q_proj.bias" in shapes
    flavor = "qwen3" if qwen3 else "qwen2"
    model_type = str(raw.get("model_type", ""))
    archs = " ".join(str(a) for a in raw.get("architectures") or [])
    if flavor not in (model_type + archs).lower():
        log.warning(
            "%s: decoder detected as %s from the weights (q_norm %s); model_type=%r architectures=%r "
            "disagree and are ignored",
            cfg_path,
            flavor,
            "present" if qwen3 else "absent",
            model_type,
            archs,
        )
    embed = shape_of("model.embed_tokens.weight")
    n_layers = 1 + max(
        (int(n.split(".")[2]) for n in shapes if n.startswith("model.layers.") and n.split(".")[2].isdigit()),
        default=-1,
    )
    hidden = src.get("hidden_size", embed[1], "embedding width")
    heads = src.require("num_attention_heads")
    head_dim = raw.get("head_dim")
    if head_dim is None:
        head_dim = shape_of("model.layers.0.self_attn.q_proj.weight")[0] // heads
        log.info("%s: no head_dim; using q_proj rows / num_attention_heads = %d", cfg_path, head_dim)
    rope = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    rope_theta = raw.get("rope_theta", rope.get("rope_theta"))
    if rope_theta is None:
        rope_theta = 1_000_000.0
        log.info("%s: no rope_theta; using %g", cfg_path, rope_theta)
    decoder = DecoderConfig(
        hidden=int(hidden),
        intermediate=int(
            src.get("intermediate_size", shape_of("model.layers.0.mlp.gate_proj.weight")[0], "gate_proj rows")
        ),
        layers=int(src.get("num_hidden_layers", n_layers, "count of model.layers.*")),
        heads=int(heads),
        kv_heads=int(src.get("num_key_value_heads", heads, "num_attention_heads (no GQA)")),
        head_dim=int(head_dim),
        vocab=int(src.get("vocab_size", embed[0], "embedding rows")),
        rope_theta=float(rope_theta),
        eps=float(src.get("rms_norm_eps", 1e-6)),
        qkv_bias=qkv_bias,
        qk_norm=qwen3,
        tie_embeddings=bool(src.get("tie_word_embeddings", False)),
        max_position=int(src.get("max_position_embeddings", 32768)),
    )
    if n_layers != decoder.layers:
        raise CheckpointError(
            f"{cfg_path}: num_hidden_layers={decoder.layers} but the weights hold {n_layers} decoder layers",
            file=cfg_path,
            tensor=f"model.layers.{min(n_layers, decoder.layers)}",
        )

    # ---- vision
    vision = _vision_config(d, raw, shapes, cfg_path)

    # ---- projector
    ptype = src.get("mm_projector_type", "mlp2x_gelu")
    m = re.fullmatch(r"mlp(\d+)x_gelu", str(ptype))
    if m is None:
        raise ConfigError(f"{cfg_path}: mm_projector_type {ptype!r} is not supported; expected mlpNx_gelu")
    projector = ProjectorConfig(depth=int(m.group(1)))

    # ---- tokens
    tokens = _tokens(d, raw, cfg_path)
    if not 0 <= tokens.image < decoder.vocab:
        raise ConfigError(
            f"{cfg_path}: image_token_index={tokens.image} is outside the {decoder.vocab} embedding rows"
        )

    # ---- reduction and preprocessing
    reduction = ReductionConfig(enabled=bool(src.get("use_token_compression", True, "upstream HF default")))
    preprocess = _preprocess(d)
    dtype = raw.get("torch_dtype", raw.get("dtype"))
    if dtype is None:
        dtype = "bfloat16"
        log.info("%s: no torch_dtype; using bfloat16", cfg_path)
    return HuluConfig(
        name=d.resolve().name,
        vision=vision,
        decoder=decoder,
        tokens=tokens,
        projector=projector,
        reduction=reduction,
        preprocess=preprocess,
        torch_dtype=str(dtype),
    )


class _Source:
    """config.json lookups that log every fallback."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path, self.raw = path, raw

    def get(self, key: str, default: Any, why: str = "") -> Any:
        value = self.raw.get(key)
        if value is None:
            log.info("%s: no %s; using %r%s", self.path, key, default, f" ({why})" if why else "")
            return default
        return value

    def require(self, key: str) -> Any:
        value = self.raw.get(key)
        if value is None:
            raise ConfigError(f"{self.path}: required key {key!r} is missing")
        return value


def _vision_config(
    d: Path, raw: dict[str, Any], shapes: dict[str, tuple[int, ...]], cfg_path: Path
) -> VisionConfig:
    name = _VE + "embeddings.patch_embedding.weight"
    if name not in shapes:
        raise CheckpointError(
            f"{d}: tensor {name!r} not found; needed for the vision encoder", file=d, tensor=name
        )
    pe = shapes[name]  # (Cv, 3, P, P)
    layers = sum(
        1 for n in shapes if n.startswith(_VE + "encoder.layers.") and n.endswith(".layer_norm1.weight")
    )
    inferred = {
        "hidden_size": pe[0],
        "num_channels": pe[1],
        "patch_size": pe[3],
        "num_hidden_layers": layers,
        "intermediate_size": shapes.get(_VE + "encoder.layers.0.mlp.fc1.weight", (0,))[0],
    }
    vc = raw.get("vision_encoder_config")
    where = f"{cfg_path} vision_encoder_config"
    if not isinstance(vc, dict):
        vc, where = _original_vision_config(d, raw, cfg_path)
    values: dict[str, Any] = {}
    for key, value in inferred.items():
        if vc.get(key) is None:
            log.info("%s: no %s; inferred %s from tensor shapes", where, key, value)
            values[key] = value
        elif int(vc[key]) != value:
            raise CheckpointError(
                f"{where}: {key}={vc[key]} but the weights say {value}", file=cfg_path, tensor=name
            )
        else:
            values[key] = int(vc[key])
    heads = vc.get("num_attention_heads")
    if heads is None:
        heads = 16
        log.warning(
            "%s: no num_attention_heads (cannot be inferred from shapes); using %d as the released models do",
            where,
            heads,
        )
    eps = vc.get("layer_norm_eps")
    if eps is None:
        eps = 1e-6
        log.info("%s: no layer_norm_eps; using %g", where, eps)
    return VisionConfig(
        hidden=values["hidden_size"],
        intermediate=values["intermediate_size"],
        layers=values["num_hidden_layers"],
        heads=int(heads),
        patch=values["patch_size"],
        channels=values["num_channels"],
        eps=float(eps),
    )


def _original_vision_config(d: Path, raw: dict[str, Any], cfg_path: Path) -> tuple[dict[str, Any], str]:
    """Original format: config.json names a separate SigLIP-NaViT directory; read its config.json if here."""
    ref = raw.get("vision_encoder") or raw.get("mm_vision_encoder")
    if isinstance(ref, str) and ref:
        for cand in (Path(ref), d / ref, d / Path(ref).name):
            if (cand / "config.json").is_file():
                from huluexport.reference.weights import _read_json

                vc = _read_json(cand / "config.json", "vision encoder config.json")
                return vc.get("vision_config", vc), str(cand / "config.json")
        log.info(
            "%s: vision_encoder %r is not a local directory; inferring the vision config from shapes",
            cfg_path,
            ref,
        )
    else:
        log.info("%s: no vision_encoder_config; inferring the vision config from shapes", cfg_path)
    return {}, f"{cfg_path} (no vision config)"


def _added_tokens(d: Path) -> dict[str, int]:
    path = d / "tokenizer.json"
    if not path.is_file():
        return {}
    from huluexport.reference.weights import _read_json

    data = _read_json(path, "tokenizer.json")
    return {
        str(t["content"]): int(t["id"]) for t in data.get("added_tokens", []) if "content" in t and "id" in t
    }


def _tokens(d: Path, raw: dict[str, Any], cfg_path: Path) -> TokenConfig:
    added = _added_tokens(d)
    image = raw.get("image_token_index")
    if image is None or int(image) < 0:  # -1 is the HF class default, i.e. unset
        if "<image>" not in added:
            raise ConfigError(
                f"{cfg_path}: image_token_index is missing (or -1) and {d / 'tokenizer.json'} "
                "has no '<image>' token"
            )
        image = added["<image>"]
        log.info("%s: no image_token_index; using the tokenizer's <image> id %d", cfg_path, image)
    elif "<image>" in added and added["<image>"] != int(image):
        raise ConfigError(
            f"{cfg_path}: image_token_index={image} but tokenizer.json maps '<image>' to {added['<image>']}"
        )
    defaults = TokenConfig(image=0)
    ids = {}
    for key, content in (
        ("endoftext", "<|endoftext|>"),
        ("im_start", "<|im_start|>"),
        ("im_end", "<|im_end|>"),
    ):
        if content in added:
            ids[key] = added[content]
        else:
            ids[key] = getattr(defaults, key)
            log.info("%s: tokenizer.json has no %s; using the Qwen id %d", d, content, ids[key])
    eos: list[int] = []
    gen_path = d / "generation_config.json"
    sources: list[Any] = [raw.get("eos_token_id")]
    if gen_path.is_file():
        from huluexport.reference.weights import _read_json

        sources.insert(0, _read_json(gen_path, "generation_config.json").get("eos_token_id"))
    else:
        log.info("%s: no generation_config.json; stop ids from config.json and the tokenizer", d)
    for s in sources:
        for i in s if isinstance(s, list) else [s]:
            if i is not None and int(i) not in eos:
                eos.append(int(i))
    for i in (ids["im_end"], ids["endoftext"]):  # ARCHITECTURE 8.4: always stop on these two
        if i not in eos:
            eos.append(i)
    return TokenConfig(image=int(image), eos=tuple(eos), **ids)


def _preprocess(d: Path) -> PreprocessConfig:
    path = d / "preprocessor_config.json"
    if not path.is_file():
        log.info("%s: not found; using the ARCHITECTURE 3.1 processor defaults", path)
        return PreprocessConfig()
    from huluexport.reference.weights import _read_json

    raw = _read_json(path, "preprocessor_config.json")
    base = PreprocessConfig()
    values: dict[str, Any] = {}
    for field_name, key in (
        ("patch", "patch_size"),
        ("min_tokens", "min_tokens"),
        ("max_tokens", "max_tokens"),
        ("image_mean", "image_mean"),
        ("image_std", "image_std"),
    ):
        if key in raw:
            v = raw[key]
            values[field_name] = tuple(float(x) for x in v) if isinstance(v, list) else int(v)
        else:
            log.info("%s: no %s; using %r", path, key, getattr(base, field_name))
    return dataclasses.replace(base, **values)
