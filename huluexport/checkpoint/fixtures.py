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

from huluexport import progress
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


def build_tokenizer(tokens: TokenConfig | None = None) -> Any:
    """Train the tiny byte-level BPE (deterministic) and return a `tokenizers.Tokenizer`.

    With `tokens` of a real size (e.g. SIZES["7b"].tokens) the same BPE is padded with unreachable filler
    entries so that the added tokens sit at that size's ids (<|endoftext|> 151643, <image> 151665, ...), the
    others after the highest of them, any gap between filled with reserved special tokens: a checkpoint of that
    size then reads back with the ids its config.json names (huluexport/checkpoint/reader.py checks them)."""
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
    expected = _tokens_of(tokens or SIZES["tiny"].tokens)
    ids = _added_ids(expected)
    first = min(ids.values())
    if first > TINY_BPE_SIZE:  # fillers: vocabulary entries no merge produces (the byte-level BPE never emits)
        raw = json.loads(tok.to_str())
        raw["model"]["vocab"].update({f"<|filler_{i}|>": i for i in range(TINY_BPE_SIZE, first)})
        tok = Tokenizer.from_str(json.dumps(raw))
    special = dict(TINY_ADDED_TOKENS)
    by_id = {i: c for c, i in ids.items()}
    for idx in range(first, max(ids.values()) + 1):
        content = by_id.get(idx, f"<|reserved_{idx}|>")
        token = AddedToken(
            content, special=special.get(content, True), normalized=False, single_word=False, lstrip=False,
            rstrip=False,
        )
        if special.get(content, True):
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    for content, idx in ids.items():
        if tok.token_to_id(content) != idx:
            raise RuntimeError(f"tokenizer put {content!r} at {tok.token_to_id(content)}; expected {idx}")
    return tok


def _added_ids(expected: dict[str, int]) -> dict[str, int]:
    """content -> id of every added token: the tiny layout (284..292) for the tiny ids; otherwise the config's
    ids for the four it names and the others, in TINY_ADDED_TOKENS order, after the highest of those."""
    if expected == _tokens_of(SIZES["tiny"].tokens):
        return {c: TINY_BPE_SIZE + i for i, (c, _) in enumerate(TINY_ADDED_TOKENS)}
    ids = dict(expected)
    nxt = max(expected.values()) + 1
    for content, _ in TINY_ADDED_TOKENS:
        if content not in ids:
            ids[content], nxt = nxt, nxt + 1
    return ids


def write_tokenizer(out_dir: str | Path, tokens: TokenConfig | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json (Qwen-like: no BOS, eos <|im_end|>) into out_dir; `tokens`:
    the ids of a real size (see build_tokenizer; default the tiny ones)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(tokens)
    tok.save(str(out / "tokenizer.json"))
    named = _tokens_of(tokens or SIZES["tiny"].tokens)
    ids = _added_ids(named)
    added = {
        str(ids[content]): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, special in sorted(TINY_ADDED_TOKENS, key=lambda t: ids[t[0]])
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
            c for c, s in TINY_ADDED_TOKENS if s and c not in named
        ],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return out / "tokenizer.json"


# --------------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------------

LM_HEAD_MODES = ("auto", "stored", "absent")
OUTPUT_MARKER = ".huluexport-init-checkpoint"  # JSON: what wrote the directory (size, seed, layout, dtype)
BODY_SHARDS = 3  # the body in 3 shards, lm_head alone in "model-00004-of-00003" (as the real 7B names it)
ORIGINAL_VISION_DIR = "siglip-navit"


def chat_template() -> str:
    """The fixture's chat_template.json: the runtime's built-in Hulu-Med template (docs/model.md §7.2)."""
    from hulurt.prompt import BUILTIN_CHAT_TEMPLATE

    return BUILTIN_CHAT_TEMPLATE


def fixture_config(
    size: str = "tiny", decoder: str | None = None, layers: int | None = None, full_depth: bool = False
) -> HuluConfig:
    """The preset a fixture is written from: tiny + decoder="qwen3" is tiny-qwen3; other sizes need layers
    unless `full_depth` (the streamed hf writer makes any size in bounded memory).

    `layers` slices the preset by huluexport.config.slice_layers (the same rule as `build --layers`).
    """
    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    if size == "tiny" and decoder == "qwen3":
        size = "tiny-qwen3"
    cfg = SIZES[size]
    if decoder is not None and cfg.decoder.flavor != decoder:
        raise ConfigError(f"--decoder {decoder}: size {size!r} has a {cfg.decoder.flavor} decoder")
    if not size.startswith("tiny") and layers is None and not full_depth:
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
    workers: int = 2,
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
    The hf shards are streamed (huluexport/checkpoint/stream_writer.py: bounded memory, `workers` threads),
    so any size can be written at full depth; the original layout's pytorch_model.bin is made in memory.
    A marker file (OUTPUT_MARKER) says the directory is this writer's output (init-checkpoint may replace it).
    """
    import torch

    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r}: expected one of {LAYOUTS}")
    if lm_head not in LM_HEAD_MODES:
        raise ConfigError(f"lm_head {lm_head!r}: expected one of {LM_HEAD_MODES}")
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
    if dtype not in dtypes:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(dtypes)}")
    if layout == "original" and not size.startswith("tiny") and layers is None:
        raise ConfigError(
            f"--size {size} --layout original: pytorch_model.bin is written from memory (tens of GB at full "
            "depth); pass --layers N, or use --layout hf (streamed shards)"
        )
    cfg = cfg or fixture_config(size, decoder, layers, full_depth=layout == "hf")
    if use_token_compression is not None:
        cfg = cfg.replace(reduction=dataclasses.replace(cfg.reduction, enabled=use_token_compression))
    stored = (not cfg.decoder.tie_embeddings) if lm_head == "auto" else lm_head == "stored"
    if not stored and not cfg.decoder.tie_embeddings:
        raise ConfigError("lm_head='absent' needs a tied config (tie_word_embeddings true)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "hf":
        _write_shards(out, cfg, seed, dtypes[dtype], stored, workers)
        _write_json(out / "preprocessor_config.json", _preprocessor_json(cfg))
        _write_json(out / "chat_template.json", {"chat_template": chat_template()})
    else:
        from huluexport.checkpoint.random_weights import random_state

        with progress.phase("write pytorch_model.bin", unit="B") as step:
            state = random_state(cfg, seed, lm_head=stored)
            tensors = {checkpoint_name(ref, layout): t.to(dtypes[dtype]).contiguous() for ref, t in state.items()}
            torch.save(tensors, str(out / "pytorch_model.bin"))
            step.advance((out / "pytorch_model.bin").stat().st_size)
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
    with progress.phase("tokenizer"):
        write_tokenizer(out, cfg.tokens)
    _write_json(out / OUTPUT_MARKER, {"tool": "huluexport init-checkpoint", "size": cfg.name, "seed": seed,
                                      "layout": layout, "dtype": dtype})
    log.info(
        "wrote %s checkpoint (%s, %s layout, seed %d) to %s", cfg.name, cfg.decoder.flavor, layout, seed, out
    )
    return out


def _write_shards(out: Path, cfg: HuluConfig, seed: int, dtype: Any, stored: bool, workers: int) -> None:
    """The safetensors shards + index of the hf layout, streamed: random_weights' values, tensor by tensor."""
    import math

    import torch

    from huluexport.checkpoint.layout import parameter_shapes
    from huluexport.checkpoint.random_weights import random_chunks
    from huluexport.checkpoint.stream_writer import write_files

    ref_shapes = parameter_shapes(cfg)
    refs = {checkpoint_name(r): r for r in ref_shapes if stored or r != LM_HEAD}
    shapes = {n: ref_shapes[r] for n, r in refs.items()}
    esize = torch.empty((), dtype=dtype).element_size()
    nbytes = {n: math.prod(s) * esize for n, s in shapes.items()}
    head_name = checkpoint_name(LM_HEAD)
    body = [n for n in shapes if n != head_name]
    shards: list[list[str]] = [[] for _ in range(BODY_SHARDS)]
    budget, acc = sum(nbytes[n] for n in body) / BODY_SHARDS, 0
    for n in body:
        shards[min(int(acc // budget) if budget else 0, BODY_SHARDS - 1)].append(n)
        acc += nbytes[n]
    if stored:  # like the real 7B: lm_head alone in a shard numbered past the count
        shards.append([head_name])
    files = {
        out / f"model-{k + 1:05d}-of-{BODY_SHARDS:05d}.safetensors": [(n, shapes[n]) for n in names]
        for k, names in enumerate(shards)
    }
    weight_map = {n: path.name for path, tensors in files.items() for n, _ in tensors}
    with progress.phase(f"write {len(files)} safetensors shards", total=sum(nbytes.values()), unit="B") as step:
        write_files(
            files,
            lambda name, shape: random_chunks(refs[name], shape, seed),
            dtype,
            metadata={"format": "pt"},
            workers=workers,
            done=step.advance,
        )
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map},
    )


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
