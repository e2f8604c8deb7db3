"""The PyTorch reference model a bundle was built from, rebuilt from its manifest's weight record (the
Hub checkpoint it names or `--checkpoint`, or the random seed; the same layer slice). `huluexport verify` and
`huluexport bench --compare-reference` both compare the bundle against this model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hulurt import manifest as rt

from huluexport.checkpoint import from_checkpoint
from huluexport.checkpoint.hub import recorded_checkpoint
from huluexport.config import HuluConfig, preset, slice_layers, to_dims
from huluexport.errors import ConfigError, ManifestError
from huluexport.export.pipeline import WeightSpec, config_from_dict, reference_model, weight_source


def reference_for_bundle(
    m: rt.Manifest, checkpoint: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[HuluConfig, Any]:
    """-> (the bundle's sliced config, the reference HuluMed in `dtype` on the CPU)."""
    cfg = config_from_dict(m.model, m.path)
    implied = to_dims(cfg, rt.ACT_DTYPE[m.precision])
    if implied != m.dims:
        diff = next(k for k in m.dims.__dataclass_fields__ if getattr(implied, k) != getattr(m.dims, k))
        raise ManifestError(f"{m.path}: field 'model': its sizes give {diff} = {getattr(implied, diff)}, but "
                            f"dims.{diff} is {getattr(m.dims, diff)}; rebuild the bundle")
    w = m.model.get("weights") or {}
    if not isinstance(w, dict):
        raise ManifestError(f"{m.path}: field 'model.weights': expected an object, found {type(w).__name__}")
    layers = w.get("layers")
    if checkpoint is not None or w.get("kind") == "checkpoint":
        ck = recorded_checkpoint(w, m.path, checkpoint)  # --checkpoint, or the Hub repo and commit recorded
        full = from_checkpoint(ck)
        spec = WeightSpec("checkpoint", str(ck), 0, layers, w.get("vision_layers"))
    elif w.get("kind") == "random":
        full = preset(cfg.name)
        spec = WeightSpec("random", None, int(w.get("seed", 0)), layers, w.get("vision_layers"))
    else:
        raise ConfigError(
            f"{m.path}: model.weights does not say where the weights came from; pass --checkpoint DIR"
        )
    sliced = slice_layers(full, layers, spec.vision_layers)
    if sliced.decoder != cfg.decoder or sliced.vision != cfg.vision:
        raise ConfigError(
            f"{ck if checkpoint is not None else m.path}: checkpoint architecture differs from the "
            f"bundle's ({sliced.decoder} vs {cfg.decoder})"
        )
    return sliced, reference_model(sliced, weight_source(full, spec), dtype=dtype)
