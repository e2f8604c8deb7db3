"""Tiny random Hulu-Med checkpoints in the real on-disk layout, for tests and demos.

`write_tokenizer` trains a small byte-level BPE locally; `write_checkpoint` writes config.json, sharded
safetensors + index (lm_head in an oddly named shard, like the real 7B), and the side files: the files that
huluexport.checkpoint's readers read. The weights are huluexport.checkpoint.random_weights' (the same values
`build --random-weights` exports for the same seed and config).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from huluexport.checkpoint.names import LAYOUTS, LM_HEAD, checkpoint_name
from huluexport.config import SIZES, HuluConfig, TokenConfig, slice_layers
from huluexport.errors import ConfigError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

# Added tokens of the tiny tokenizer, in id order after the BPE vocabulary. The ids of endoftext, im_start,
# im_end and <image> are those of SIZES["tiny"].tokens (286, 287, 288, 290). `special` follows Qwen:
# <think>/</think> are added but not special (they survive skip_special_tokens decoding).
TINY_BPE_SIZE = 284  # 256 byte symbols + 28 merges
TINY_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<think>", False),  # 284
    ("</think>", False),  # 285
    ("<|endoftext|>", True),  # 286
    ("<|im_start|>", True),  # 287
    ("<|im_end|>", True),  # 288
    ("<|vision_pad|>", True),  # 289
    ("<image>", True),  # 290
    ("<|stream_start|>", True),  # 291
    ("<|stream_end|>", True),  # 292
)

_CORPUS = """\
The patient is a 64-year-old man with a history of hypertension who presented with chest pain.
A chest radiograph shows no focal consolidation, pleural effusion or pneumothorax. The heart size is normal.
Axial CT images of the abdomen demonstrate a small hypodense lesion in the right lobe of the liver.
MRI of the brain: there is no evidence of acute infarction, hemorrhage or mass effect.
The ventricles are normal.
Findings are consistent with mild degenerative changes of the lumbar spine. No fracture is seen.
Describe this image in detail. What abnormality is visible in this scan? Please answer the question.
The image shows the left lung with an opacity in the lower lobe, which may represent pneumonia.
Impression: no acute cardiopulmonary process. Recommend clinical correlation and follow-up imaging.
The kidneys are normal in size and there is no hydronephrosis. The spleen and pancreas are unremarkable.
This is a sagittal T1-weighted image of the knee showing a tear of the medial meniscus.
The quick brown fox jumps over the lazy dog. A model answers questions about medical images and videos.
Please reason step by step, and put your final answer within a box. The answer is yes. The answer is no.
There is a nodule in the thyroid gland. The lesion measures 12 mm and has smooth margins.
Ultrasound of the gallbladder shows multiple stones without wall thickening.
The endoscopy video shows a polyp in the colon; the mucosa elsewhere is normal.
"""


def _tokens_of(cfg: TokenConfig) -> dict[str, int]:
    return {
        "<|endoftext|>": cfg.endoftext,
        "<|im_start|>": cfg.im_start,
        "<|im_end|>": cfg.im_end,
        "<image>": cfg.image,
    }


def build_tokenizer() -> Any:
    """Train the tiny byte-level BPE (deterministic) and return a `tokenizers.Tokenizer`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    if tok.get_vocab_size() != TINY_BPE_SIZE:
        raise RuntimeError(f"tiny BPE trained to {tok.get_vocab_size()} tokens; expected {TINY_BPE_SIZE}")
    for content, special in TINY_ADDED_TOKENS:
        token = AddedToken(
            content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False
        )
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    expected = _tokens_of(SIZES["tiny"].tokens)
    for content, idx in expected.items():
        if tok.token_to_id(content) != idx:
            raise RuntimeError(
                f"tiny tokenizer put {content!r} at {tok.token_to_id(content)}; expected {idx}"
            )
    return tok


def write_tokenizer(out_dir: str | Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json (Qwen-like: no BOS, eos <|im_end|>) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(TINY_BPE_SIZE + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(TINY_ADDED_TOKENS)
    }
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "split_special_tokens": False,
        "errors": "replace",
        "added_tokens_decoder": added,
        "additional_special_tokens": [
            c for c, s in TINY_ADDED_TOKENS if s and c not in _tokens_of(SIZES["tiny"].tokens)
        ],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return out / "tokenizer.json"


# --------------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------------

LM_HEAD_MODES = ("auto", "stored", "absent")
ORIGINAL_VISION_DIR = "siglip-navit"


def chat_template() -> str:
    """The fixture's chat_template.json: the runtime's built-in Hulu-Med template (docs/model.md §7.2)."""
    from hulurt.prompt import BUILTIN_CHAT_TEMPLATE

    return BUILTIN_CHAT_TEMPLATE


def fixture_config(size: str = "tiny", decoder: str | None = None, layers: int | None = None) -> HuluConfig:
    """The preset a fixture is written from: tiny + decoder="qwen3" is tiny-qwen3; other sizes need layers.

    `layers` slices the preset by huluexport.config.slice_layers (the same rule as `build --layers`).
    """
    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    if size == "tiny" and decoder == "qwen3":
        size = "tiny-qwen3"
    cfg = SIZES[size]
    if decoder is not None and cfg.decoder.flavor != decoder:
        raise ConfigError(f"--decoder {decoder}: size {size!r} has a {cfg.decoder.flavor} decoder")
    if not size.startswith("tiny") and layers is None:
        raise ConfigError(
            f"--size {size}: a full random {size} checkpoint is tens of GB; pass --layers N (e.g. 1) "
            "to write a shallow one with the real widths"
        )
    return slice_layers(cfg, layers)


def _config_json(cfg: HuluConfig, layout: str, dtype: str, lm_head_stored: bool) -> dict[str, Any]:
    dec, tok = cfg.decoder, cfg.tokens
    qwen3 = dec.flavor == "qwen3"
    model_type = "hulumed_qwen3" if qwen3 and layout == "hf" else "hulumed_qwen2"  # original 14B says qwen2
    raw: dict[str, Any] = {
        "architectures": [
            "HulumedQwen3ForCausalLM" if model_type == "hulumed_qwen3" else "HulumedQwen2ForCausalLM"
        ],
        "model_type": model_type,
        "hidden_size": dec.hidden,
        "intermediate_size": dec.intermediate,
        "num_hidden_layers": dec.layers,
        "num_attention_heads": dec.heads,
        "num_key_value_heads": dec.kv_heads,
        "vocab_size": dec.vocab,
        "rope_theta": dec.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": dec.eps,
        "max_position_embeddings": dec.max_position,
        "tie_word_embeddings": dec.tie_embeddings,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "torch_dtype": dtype,
        "bos_token_id": tok.endoftext,
        "eos_token_id": tok.im_end,
        "image_token_index": tok.image,
        "mm_projector_type": cfg.projector.type_name,
        "use_token_compression": cfg.reduction.enabled,
        "image_aspect_ratio": "avt",
        "mm_vision_select_layer": -1,
        "tokenizer_model_max_length": 4096,
    }
    if qwen3:
        raw["head_dim"] = dec.head_dim
        raw["attention_bias"] = False
    if layout == "hf":
        raw["vision_encoder"] = None
        raw["vision_encoder_config"] = _vision_json(cfg)
    else:
        raw["vision_encoder"] = ORIGINAL_VISION_DIR
        raw["mm_vision_encoder"] = ORIGINAL_VISION_DIR
    return raw


def _vision_json(cfg: HuluConfig) -> dict[str, Any]:
    v = cfg.vision
    return {
        "model_type": "hulumed_vision_encoder",
        "hidden_size": v.hidden,
        "intermediate_size": v.intermediate,
        "num_attention_heads": v.heads,
        "num_hidden_layers": v.layers,
        "patch_size": v.patch,
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_checkpoint(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    decoder: str | None = None,
    layout: str = "hf",
    dtype: str = "bfloat16",
    lm_head: str = "auto",
    layers: int | None = None,
    use_token_compression: bool | None = None,
    cfg: HuluConfig | None = None,
) -> Path:
    """Write a random Hulu-Med checkpoint directory in the real layout and return its path.

    layout "hf": config.json with vision_encoder_config, 3 safetensors shards + index with lm_head in
    model-00004-of-00003.safetensors. layout "original": model.vision_encoder.vision_encoder.* names in
    pytorch_model.bin, no vision_encoder_config (the vision config sits in ./siglip-navit/config.json, as the
    separate encoder directory upstream points to), model_type hulumed_qwen2 even for Qwen3.
    lm_head: "auto" stores it iff the config is untied; "stored"/"absent" force it (tie flag unchanged).
    cfg: written instead of the preset (size, decoder, layers then only name it), e.g. a tiny model deeper
    than the preset's 2 layers.
    """
    import torch
    from safetensors.torch import save_file

    from huluexport.checkpoint.random_weights import random_state

    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r}: expected one of {LAYOUTS}")
    if lm_head not in LM_HEAD_MODES:
        raise ConfigError(f"lm_head {lm_head!r}: expected one of {LM_HEAD_MODES}")
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
    if dtype not in dtypes:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(dtypes)}")
    cfg = cfg or fixture_config(size, decoder, layers)
    if use_token_compression is not None:
        cfg = cfg.replace(reduction=dataclasses.replace(cfg.reduction, enabled=use_token_compression))
    stored = (not cfg.decoder.tie_embeddings) if lm_head == "auto" else lm_head == "stored"
    if not stored and not cfg.decoder.tie_embeddings:
        raise ConfigError("lm_head='absent' needs a tied config (tie_word_embeddings true)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = random_state(cfg, seed, lm_head=stored)
    tensors = {checkpoint_name(ref, layout): t.to(dtypes[dtype]).contiguous() for ref, t in state.items()}

    if layout == "hf":
        head_name = checkpoint_name(LM_HEAD)
        body = [n for n in tensors if n != head_name]
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        shards: list[list[str]] = [[], [], []]
        budget, acc = sum(tensors[n].numel() * tensors[n].element_size() for n in body) / 3, 0
        for n in body:
            k = min(int(acc // budget) if budget else 0, 2)
            shards[k].append(n)
            acc += tensors[n].numel() * tensors[n].element_size()
        weight_map: dict[str, str] = {}
        for k, names in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-00003.safetensors"
            save_file({n: tensors[n] for n in names}, str(out / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in names})
        if stored:  # like the real 7B: lm_head alone in a shard numbered past the count
            fname = "model-00004-of-00003.safetensors"
            save_file({head_name: tensors[head_name]}, str(out / fname), metadata={"format": "pt"})
            weight_map[head_name] = fname
        _write_json(
            out / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
        _write_json(out / "preprocessor_config.json", _preprocessor_json(cfg))
        _write_json(out / "chat_template.json", {"chat_template": chat_template()})
    else:
        torch.save(tensors, str(out / "pytorch_model.bin"))
        vdir = out / ORIGINAL_VISION_DIR
        vdir.mkdir(exist_ok=True)
        _write_json(vdir / "config.json", _vision_json(cfg))
    _write_json(out / "config.json", _config_json(cfg, layout, dtype, stored))
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": cfg.tokens.endoftext,
            "eos_token_id": [cfg.tokens.im_end, cfg.tokens.endoftext],
            "pad_token_id": cfg.tokens.endoftext,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "repetition_penalty": 1.05,
        },
    )
    write_tokenizer(out)
    log.info(
        "wrote %s checkpoint (%s, %s layout, seed %d) to %s", cfg.name, cfg.decoder.flavor, layout, seed, out
    )
    return out


def _preprocessor_json(cfg: HuluConfig) -> dict[str, Any]:
    p = cfg.preprocess
    return {
        "image_processor_type": "HulumedImageProcessor",
        "processor_class": "HulumedProcessor",
        "patch_size": p.patch,
        "min_tokens": p.min_tokens,
        "max_tokens": p.max_tokens,
        "image_mean": list(p.image_mean),
        "image_std": list(p.image_std),
        "rescale_factor": 0.00392156862745098,
        "resample": 3,
        "do_convert_rgb": True,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
    }
