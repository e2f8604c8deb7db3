"""Loading checkpoint tensors into torch: per-tensor iteration and the strict reference model load.

Which tensors exist, where, with which names and shapes (and the refusal of anything that does not fit the
config) is huluexport.checkpoint, read without torch; this module only reads tensor data, after
`huluexport.checkpoint.plan` has accepted every name and shape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from huluexport.checkpoint import EMBED, LM_HEAD, TensorEntry, from_checkpoint, plan
from huluexport.config import HuluConfig
from huluexport.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save state dict, memory-mapped, tensors only (weights_only: no code from the file runs)."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises pickle, zip and its own errors on a corrupt file
        raise CheckpointError(f"{path}: not a readable PyTorch weight file ({exc})", file=path) from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict; found {type(sd).__name__}", file=path)
    return sd


def expected_shapes(cfg: HuluConfig) -> dict[str, tuple[int, ...]]:
    """reference name -> shape, from the reference module tree itself (built on the meta device).

    huluexport.checkpoint.parameter_shapes is the same table without torch; tests hold the two equal.
    """
    from huluexport.reference.model import HuluMed

    with torch.device("meta"):
        model = HuluMed(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


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
            sd = load_bin(f)
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
