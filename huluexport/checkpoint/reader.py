"""`from_checkpoint(dir)`: the HuluConfig of a checkpoint directory, HF-version or original layout, without torch.

Architecture numbers come from config.json, cross-checked with (or, where absent, inferred from) the tensor
shapes in the weight headers. Qwen2 vs Qwen3 is decided by the presence of q_norm weights, never by
model_type. Every default used in place of a missing value is logged. Every value is checked for type and
range (huluexport.checkpoint.values) before the weight headers are even opened, so a hostile config.json
fails in one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from huluexport.checkpoint.jsonfile import read_json
from huluexport.checkpoint.paths import inside, root_of, side_file
from huluexport.checkpoint.tensors import scan
from huluexport.checkpoint.values import MAX_PROJECTOR_DEPTH, Values
from huluexport.config import (
    DecoderConfig,
    HuluConfig,
    PreprocessConfig,
    ProjectorConfig,
    ReductionConfig,
    TokenConfig,
    VisionConfig,
)
from huluexport.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

_VE = "model.vision_encoder."
_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")


def read_config_json(ckpt_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path, raw) of the checkpoint's config.json after `check_config_json`: the first thing a build reads."""
    d = root_of(ckpt_dir)
    inside(d, "config.json")
    path = d / "config.json"  # named as listed (in a Hub cache it is a link to a blob inside the cache)
    raw = read_json(path, "config.json")
    check_config_json(path, raw)
    return path, raw


def check_config_json(path: Path, raw: dict[str, Any]) -> None:
    """Type, range and consistency of every config.json key the export uses (no weights needed)."""
    src = Values(path, raw, quiet=True)  # from_checkpoint logs the defaults it then uses
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "vocab_size",
        "max_position_embeddings",
    ):
        src.int(key)
    heads = src.require_int("num_attention_heads")
    kv = src.int("num_key_value_heads")
    if kv is not None and heads % kv:
        raise src.fail("num_key_value_heads", f"a divisor of num_attention_heads={heads}", kv)
    head_dim = src.int("head_dim")
    if head_dim is not None and head_dim % 2:
        raise src.fail("head_dim", "even (rotary embedding pairs)", head_dim)
    if raw.get("image_token_index") != -1:  # -1 is the HF class default, i.e. unset
        src.int("image_token_index")
    src.int_list("eos_token_id", bounds="eos_token_id")
    src.positive_float("rms_norm_eps", 1e-6)
    src.positive_float("rope_theta", 1_000_000.0)
    rope = src.section("rope_parameters")
    if rope is not None:
        rope.positive_float("rope_theta", 1_000_000.0)
    src.bool("tie_word_embeddings", False)
    src.bool("use_token_compression", True)
    projector_depth(src)
    for key in ("model_type", "torch_dtype", "dtype", "vision_encoder", "mm_vision_encoder"):
        src.str(key)
    arch = raw.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise src.fail("architectures", "a list of strings", arch)
    vision = src.section("vision_encoder_config")
    if vision is not None:
        check_vision_values(vision)


def projector_depth(src: Values) -> int:
    ptype = src.str("mm_projector_type", "mlp2x_gelu")
    m = re.fullmatch(r"mlp([0-9]{1,3})x_gelu", str(ptype))
    if m is None or not 1 <= int(m.group(1)) <= MAX_PROJECTOR_DEPTH:
        raise src.fail("mm_projector_type", f"mlpNx_gelu with N in 1..{MAX_PROJECTOR_DEPTH}", ptype)
    return int(m.group(1))


def check_vision_values(vc: Values) -> None:
    for key in _VISION_KEYS + ("num_channels",):
        vc.int(key)
    vc.positive_float("layer_norm_eps", 1e-6)
    hidden, heads = vc.int("hidden_size"), vc.int("num_attention_heads")
    if hidden is not None and heads is not None and (hidden % heads or (hidden // heads) % 4):
        raise vc.fail(
            "num_attention_heads",
            f"a divisor of hidden_size={hidden} leaving a head width divisible by 4 (2-D rotary embedding)",
            heads,
        )


def from_checkpoint(ckpt_dir: str | Path) -> HuluConfig:
    """HuluConfig of a Hulu-Med checkpoint directory (see the module docstring)."""
    d = root_of(ckpt_dir)
    cfg_path, raw = read_config_json(d)
    src = Values(cfg_path, raw)
    shapes = {name: e.shape for name, e in scan(d).items()}

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
    model_type = src.str("model_type", "") or ""
    archs = " ".join(raw.get("architectures") or [])
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
    heads = src.require_int("num_attention_heads")
    head_dim = src.int("head_dim")
    if head_dim is None:
        rows = shape_of("model.layers.0.self_attn.q_proj.weight")[0]
        if rows % heads or (rows // heads) % 2:
            raise src.fail(
                "num_attention_heads", f"a divisor of q_proj's {rows} rows (no head_dim given)", heads
            )
        head_dim = rows // heads
        log.info("%s: no head_dim; using q_proj rows / num_attention_heads = %d", cfg_path, head_dim)
    rope = src.section("rope_parameters")
    if not src.has("rope_theta") and rope is not None and rope.has("rope_theta"):
        rope_theta = rope.positive_float("rope_theta", 1e6)  # transformers 5 spelling
    else:
        rope_theta = src.positive_float("rope_theta", 1e6)
    decoder = DecoderConfig(
        hidden=src.int("hidden_size", embed[1], "embedding width"),
        intermediate=src.int(
            "intermediate_size", shape_of("model.layers.0.mlp.gate_proj.weight")[0], "gate_proj rows"
        ),
        layers=src.int("num_hidden_layers", n_layers, "count of model.layers.*"),
        heads=heads,
        kv_heads=src.int("num_key_value_heads", heads, "num_attention_heads (no GQA)"),
        head_dim=head_dim,
        vocab=src.int("vocab_size", embed[0], "embedding rows"),
        rope_theta=rope_theta,
        eps=src.positive_float("rms_norm_eps", 1e-6),
        qkv_bias=qkv_bias,
        qk_norm=qwen3,
        tie_embeddings=src.bool("tie_word_embeddings", False),
        max_position=src.int("max_position_embeddings", 32768),
    )
    if n_layers != decoder.layers:
        raise CheckpointError(
            f"{cfg_path}: num_hidden_layers={decoder.layers} but the weights hold {n_layers} decoder layers",
            file=cfg_path,
            tensor=f"model.layers.{min(n_layers, decoder.layers)}",
        )

    vision = _vision_config(d, raw, shapes, cfg_path)
    projector = ProjectorConfig(depth=projector_depth(src))
    tokens = _tokens(d, src, cfg_path)
    if not 0 <= tokens.image < decoder.vocab:
        raise ConfigError(
            f"{cfg_path}: image_token_index={tokens.image} is outside the {decoder.vocab} embedding rows"
        )
    reduction = ReductionConfig(enabled=src.bool("use_token_compression", True, "upstream HF default"))
    preprocess = _preprocess(d)
    dtype = src.str("torch_dtype") or src.str("dtype")
    if dtype is None:
        dtype = "bfloat16"
        log.info("%s: no torch_dtype; using bfloat16", cfg_path)
    return HuluConfig(
        name=d.name,
        vision=vision,
        decoder=decoder,
        tokens=tokens,
        projector=projector,
        reduction=reduction,
        preprocess=preprocess,
        torch_dtype=dtype,
    )


def _vision_config(
    d: Path, raw: dict[str, Any], shapes: dict[str, tuple[int, ...]], cfg_path: Path
) -> VisionConfig:
    name = _VE + "embeddings.patch_embedding.weight"
    if name not in shapes:
        raise CheckpointError(
            f"{d}: tensor {name!r} not found; needed for the vision encoder", file=d, tensor=name
        )
    pe = shapes[name]  # (Cv, 3, P, P)
    if len(pe) != 4:
        raise CheckpointError(f"{d}: tensor {name!r} has shape {list(pe)}; expected [C, 3, P, P]", file=d)
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
    section = raw.get("vision_encoder_config")
    if isinstance(section, dict):
        vc = Values(cfg_path, section, "vision_encoder_config.")
    else:
        vc = _original_vision_config(d, raw, cfg_path)
    values: dict[str, int] = {}
    for key, value in inferred.items():
        given = vc.int(key)
        if given is None:
            log.info("%s: no %s; inferred %s from tensor shapes", vc.path, vc.key(key), value)
            values[key] = value
        elif given != value:
            raise CheckpointError(
                f"{vc.path}: {vc.key(key)}={given} but the weights say {value}", file=cfg_path, tensor=name
            )
        else:
            values[key] = given
    heads = vc.int("num_attention_heads")
    if heads is None:
        heads = 16
        log.warning(
            "%s: no %s (cannot be inferred from shapes); using %d as the released models do",
            vc.path,
            vc.key("num_attention_heads"),
            heads,
        )
    check_vision_values(
        Values(vc.path, {"hidden_size": values["hidden_size"], "num_attention_heads": heads}, vc.prefix)
    )
    return VisionConfig(
        hidden=values["hidden_size"],
        intermediate=values["intermediate_size"],
        layers=values["num_hidden_layers"],
        heads=heads,
        patch=values["patch_size"],
        channels=values["num_channels"],
        eps=vc.positive_float("layer_norm_eps", 1e-6),
    )


def _original_vision_config(d: Path, raw: dict[str, Any], cfg_path: Path) -> Values:
    """Original layout: config.json names a separate SigLIP-NaViT directory; read its config.json if it is
    inside the checkpoint (a path on the training machine, or outside the checkpoint, is not followed)."""
    ref = raw.get("vision_encoder") or raw.get("mm_vision_encoder")
    if isinstance(ref, str) and ref:
        for rel in dict.fromkeys((ref, Path(ref).name)):
            try:
                cand = inside(d, Path(rel) / "config.json", named_by=cfg_path, entry="vision_encoder")
            except CheckpointError:
                log.info("%s: vision_encoder %r is outside the checkpoint; not followed", cfg_path, rel)
                continue
            if cand.is_file():
                vc = read_json(cand, "vision encoder config.json")
                section = vc.get("vision_config", vc)
                if not isinstance(section, dict):
                    raise ConfigError(f"{cand}: vision_config must be an object")
                values = Values(cand, section)
                check_vision_values(values)
                return values
        log.info(
            "%s: vision_encoder %r is not a directory of the checkpoint; inferring the vision config from shapes",
            cfg_path,
            ref,
        )
    else:
        log.info("%s: no vision_encoder_config; inferring the vision config from shapes", cfg_path)
    return Values(f"{cfg_path} (no vision config)", {})


def _added_tokens(d: Path) -> dict[str, int]:
    path = side_file(d, "tokenizer.json")
    if path is None:
        return {}
    data = read_json(path, "tokenizer.json")
    added = data.get("added_tokens", [])
    if not isinstance(added, list):
        raise ConfigError(f"{path}: added_tokens must be a list")
    out = {}
    for t in added:
        if isinstance(t, dict) and isinstance(t.get("content"), str) and "id" in t:
            out[t["content"]] = Values(path, t, "added_tokens[].").check_int("id", t["id"], 0, (1 << 22) - 1)
    return out


def _tokens(d: Path, src: Values, cfg_path: Path) -> TokenConfig:
    added = _added_tokens(d)
    image = None if src.raw.get("image_token_index") == -1 else src.int("image_token_index")
    if image is None:  # -1 is the HF class default, i.e. unset
        if "<image>" not in added:
            raise ConfigError(
                f"{cfg_path}: image_token_index is missing (or -1) and {d / 'tokenizer.json'} "
                "has no '<image>' token"
            )
        image = added["<image>"]
        log.info("%s: no image_token_index; using the tokenizer's <image> id %d", cfg_path, image)
    elif "<image>" in added and added["<image>"] != image:
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
    gen_path = side_file(d, "generation_config.json")
    sources = [src.int_list("eos_token_id", bounds="eos_token_id")]
    if gen_path is not None:
        gen = Values(gen_path, read_json(gen_path, "generation_config.json"))
        sources.insert(0, gen.int_list("eos_token_id", bounds="eos_token_id"))
    else:
        log.info("%s: no generation_config.json; stop ids from config.json and the tokenizer", d)
    for s in sources:
        for i in s:
            if i not in eos:
                eos.append(i)
    for i in (ids["im_end"], ids["endoftext"]):  # always stop on these two, as upstream's generation does
        if i not in eos:
            eos.append(i)
    return TokenConfig(image=image, eos=tuple(eos), **ids)


def _preprocess(d: Path) -> PreprocessConfig:
    path = side_file(d, "preprocessor_config.json")
    if path is None:
        log.info("%s: not found; using the processor defaults", d / "preprocessor_config.json")
        return PreprocessConfig()
    src = Values(path, read_json(path, "preprocessor_config.json"))
    base = PreprocessConfig()
    values: dict[str, Any] = {}
    for field_name, key in (
        ("patch", "patch_size"),
        ("min_tokens", "min_tokens"),
        ("max_tokens", "max_tokens"),
    ):
        v = src.int(key)
        if v is None:
            log.info("%s: no %s; using %r", path, key, getattr(base, field_name))
        else:
            values[field_name] = v
    for field_name in ("image_mean", "image_std"):
        f = src.floats(field_name, 3)
        if f is None:
            log.info("%s: no %s; using %r", path, field_name, getattr(base, field_name))
        else:
            values[field_name] = f
    if "image_std" in values and any(s <= 0 for s in values["image_std"]):
        raise src.fail("image_std", "3 numbers > 0", list(values["image_std"]))
    out = dataclasses.replace(base, **values)
    if out.min_tokens > out.max_tokens:
        raise src.fail("min_tokens", f"at most max_tokens={out.max_tokens}", out.min_tokens)
    return out
