"""Checkpoint I/O: tensor -> file via the index, name normalisation, strict shape checks, per-tensor load.

Reference names are the checkpoint names with `model.vision_encoder.` -> `vision_encoder.`,
`model.mm_projector.` -> `mm_projector.`, `model.` -> `decoder.` and `lm_head.` -> `decoder.lm_head.`
(ARCHITECTURE.md 2.3, 2.4). The patch-embed weight keeps its checkpoint shape [C, 3, P, P].
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from huluexport.config import HuluConfig
from huluexport.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")

# Stored prefix -> canonical (HF-version) prefix; first match wins, so longer forms come first.
PREFIX_ALIASES: tuple[tuple[str, str], ...] = (
    ("model.vision_encoder.vision_encoder.", "model.vision_encoder."),  # original format (wrapper module)
    ("language_model.model.", "model."),  # vLLM-style dumps
    ("language_model.lm_head.", "lm_head."),
    ("vision_encoder.vision_encoder.", "model.vision_encoder."),
    ("vision_encoder.", "model.vision_encoder."),
    ("mm_projector.", "model.mm_projector."),
)

# Canonical prefix -> reference prefix (the module tree of reference.model.HuluMed).
_REF_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_encoder.", "vision_encoder."),
    ("model.mm_projector.", "mm_projector."),
    ("model.", "decoder."),
    ("lm_head.", "decoder.lm_head."),
)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

LM_HEAD = "decoder.lm_head.weight"
EMBED = "decoder.embed_tokens.weight"


def normalize_name(stored: str) -> str:
    """A stored tensor name in any accepted layout -> the canonical HF-version checkpoint name."""
    for alias, canonical in PREFIX_ALIASES:
        if stored.startswith(alias):
            return canonical + stored[len(alias) :]
    return stored


def reference_name(canonical: str) -> str | None:
    """Canonical checkpoint name -> reference name, or None for a name outside the model."""
    for prefix, ref in _REF_PREFIXES:
        if canonical.startswith(prefix):
            return ref + canonical[len(prefix) :]
    return None


def checkpoint_name(ref: str, layout: str = "hf") -> str:
    """Reference name -> stored checkpoint name of the given layout ("hf" or "original")."""
    if ref.startswith("decoder.lm_head."):
        return "lm_head." + ref[len("decoder.lm_head.") :]
    for prefix, ref_prefix in _REF_PREFIXES:
        if ref.startswith(ref_prefix):
            name = prefix + ref[len(ref_prefix) :]
            if layout == "original" and prefix == "model.vision_encoder.":
                name = "model.vision_encoder.vision_encoder." + ref[len(ref_prefix) :]
            return name
    raise ValueError(f"{ref!r} is not a reference name")


@dataclass(frozen=True)
class TensorEntry:
    canonical: str  # HF-version checkpoint name
    stored: str  # the name inside the file
    file: Path
    shape: tuple[int, ...]
    dtype: str


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found", file=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not readable JSON ({exc})", file=path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object; found {type(data).__name__}", file=path)
    return data


def _file_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of one weight file, reading only its header (safetensors) or via mmap (.bin)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                out = {}
                for name in f.keys():
                    sl = f.get_slice(name)
                    out[name] = (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()))
                return out
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})", file=path) from None
    sd = _load_bin(path)
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()}


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle/zip errors of a corrupt file
        raise CheckpointError(f"{path}: not a readable PyTorch weight file ({exc})", file=path) from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict; found {type(sd).__name__}", file=path)
    return sd


def weight_files(ckpt_dir: str | Path) -> tuple[Path | None, dict[str, Path]]:
    """(index file or None, stored name -> file). Follows the index's weight_map; never guesses shards."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory not found", file=d)
    for index_name in INDEX_FILES:
        index = d / index_name
        if index.exists():
            data = _read_json(index, "weight index")
            wm = data.get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise CheckpointError(f"{index}: expected a non-empty 'weight_map' object", file=index)
            files = {name: d / str(fname) for name, fname in wm.items()}
            for name, f in files.items():
                if not f.exists():
                    raise CheckpointError(
                        f"{index}: shard {f.name} listed for tensor {name!r} does not exist in {d}",
                        file=f,
                        tensor=name,
                    )
            return index, files
    for single in SINGLE_FILES:
        f = d / single
        if f.exists():
            return None, {name: f for name in _file_tensors(f)}
    bins = sorted(d.glob("pytorch_model*.bin"))
    if bins:
        files: dict[str, Path] = {}
        for f in bins:
            files.update({name: f for name in _file_tensors(f)})
        return None, files
    raise CheckpointError(
        f"{d}: no weights found; expected one of {', '.join(INDEX_FILES + SINGLE_FILES)}", file=d
    )


def scan(ckpt_dir: str | Path) -> dict[str, TensorEntry]:
    """canonical name -> TensorEntry for every tensor (shapes from the headers; no data is read)."""
    index, files = weight_files(ckpt_dir)
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    entries: dict[str, TensorEntry] = {}
    for f, names in by_file.items():
        header = _file_tensors(f)
        for stored in names:
            if stored not in header:
                raise CheckpointError(
                    f"{f}: tensor {stored!r} is listed in {index.name if index else 'the index'} "
                    "but missing from the file",
                    file=f,
                    tensor=stored,
                )
            canonical = normalize_name(stored)
            if canonical in entries:
                raise CheckpointError(
                    f"{f}: tensor {stored!r} duplicates {entries[canonical].stored!r} "
                    "after prefix normalisation",
                    file=f,
                    tensor=stored,
                )
            shape, dtype = header[stored]
            entries[canonical] = TensorEntry(canonical, stored, f, shape, dtype)
    return entries


def expected_shapes(cfg: HuluConfig) -> dict[str, tuple[int, ...]]:
    """reference name -> shape, from the reference module tree itself (built on the meta device)."""
    from huluexport.reference.model import HuluMed

    with torch.device("meta"):
        model = HuluMed(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class CheckpointPlan:
    """What will be loaded: reference name -> entry, and whether lm_head reuses the embedding (tied)."""

    entries: dict[str, TensorEntry]
    tie_lm_head: bool
    source: Path  # the index file, or the single weight file


def plan(ckpt_dir: str | Path, cfg: HuluConfig) -> CheckpointPlan:
    """Validate every name and shape against cfg before any tensor data is read."""
    d = Path(ckpt_dir)
    index, _ = weight_files(d)
    found = scan(d)
    expected = expected_shapes(cfg)
    by_ref: dict[str, TensorEntry] = {}
    for canonical, e in found.items():
        ref = reference_name(canonical)
        if ref is None or ref not in expected:
            raise CheckpointError(
                f"{e.file}: unexpected tensor {e.stored!r} "
                f"(no such parameter in a {cfg.decoder.flavor} Hulu-Med "
                f"with {cfg.decoder.layers} decoder / {cfg.vision.layers} vision layers)",
                file=e.file,
                tensor=e.stored,
            )
        if e.shape != expected[ref]:
            raise CheckpointError(
                f"{e.file}: tensor {e.stored!r} has shape {list(e.shape)}; "
                f"config.json implies {list(expected[ref])}",
                file=e.file,
                tensor=e.stored,
            )
        by_ref[ref] = e
    source = index if index is not None else next(iter(found.values())).file
    tie = False
    if LM_HEAD not in by_ref:  # ARCHITECTURE 1.4: stored lm_head wins; absent + tie flag -> reuse embed
        if cfg.decoder.tie_embeddings:
            tie = True
        else:
            raise CheckpointError(
                f"{source}: tensor 'lm_head.weight' is missing and config.json has tie_word_embeddings=false",
                file=source,
                tensor="lm_head.weight",
            )
    elif cfg.decoder.tie_embeddings:
        log.info("lm_head.weight is stored although tie_word_embeddings=true; using the stored tensor")
    missing = [r for r in expected if r not in by_ref and not (tie and r == LM_HEAD)]
    if missing:
        names = [checkpoint_name(r) for r in missing]
        raise CheckpointError(
            f"{source}: {len(missing)} tensor(s) missing, first {names[0]!r}"
            + (f" (also {', '.join(names[1:4])}{'...' if len(names) > 4 else ''})" if len(names) > 1 else ""),
            file=source,
            tensor=names[0],
        )
    return CheckpointPlan(by_ref, tie, source)


def iter_tensors(
    ckpt_dir: str | Path, cfg: HuluConfig, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (reference_name, tensor) one at a time, file by file; a tied lm_head is yielded as the embedding.

    Only one tensor (plus the embedding when tied) is alive at a time on the caller's side: a 7B never
    needs two copies. `dtype` casts each tensor as it is read; None keeps the stored dtype.
    """
    p = plan(ckpt_dir, cfg)
    by_file: dict[Path, list[tuple[str, TensorEntry]]] = {}
    for ref, e in p.entries.items():
        by_file.setdefault(e.file, []).append((ref, e))
    embed: torch.Tensor | None = None
    for f, items in by_file.items():
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                for ref, e in items:
                    t = sf.get_tensor(e.stored)
                    t = t if dtype is None else t.to(dtype)
                    if p.tie_lm_head and ref == EMBED:
                        embed = t
                    yield ref, t
        else:
            sd = _load_bin(f)
            for ref, e in items:
                t = sd[e.stored] if dtype is None else sd[e.stored].to(dtype)
                if p.tie_lm_head and ref == EMBED:
                    embed = t
                yield ref, t
            del sd
    if p.tie_lm_head:
        assert embed is not None  # plan() guarantees the embedding exists
        yield LM_HEAD, embed


def load_model(
    ckpt_dir: str | Path, dtype: torch.dtype | str | None = None, cfg: HuluConfig | None = None
) -> torch.nn.Module:
    """HuluMed from a checkpoint directory (strict: every parameter filled, every shape checked)."""
    from huluexport.config import from_checkpoint
    from huluexport.reference.model import HuluMed

    cfg = cfg if cfg is not None else from_checkpoint(ckpt_dir)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    with torch.device("meta"):
        model = HuluMed(cfg)
    tied = False
    embed: torch.Tensor | None = None
    for ref, t in iter_tensors(ckpt_dir, cfg, dtype):
        if ref == EMBED:
            embed = t
        if ref == LM_HEAD and t is embed:  # tied: share the embedding Parameter, no copy
            model.decoder.tie_weights()
            tied = True
            continue
        _set(model, ref, t)
    still_meta = [n for n, v in model.state_dict().items() if v.is_meta]
    assert not still_meta, still_meta  # plan() checked completeness
    model.eval()
    log.info(
        "loaded %s (%s decoder, lm_head %s) from %s",
        cfg.name,
        cfg.decoder.flavor,
        "tied" if tied else "stored",
        ckpt_dir,
    )
    return model


def _set(model: torch.nn.Module, ref: str, t: torch.Tensor) -> None:
    mod_path, _, attr = ref.rpartition(".")
    mod = model.get_submodule(mod_path)
    setattr(mod, attr, torch.nn.Parameter(t, requires_grad=False))
