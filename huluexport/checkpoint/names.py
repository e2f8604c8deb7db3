"""Tensor names: the stored layouts a checkpoint may use, the canonical (HF-version) name, the reference name.

Reference names are the checkpoint names with `model.vision_encoder.` -> `vision_encoder.`,
`model.mm_projector.` -> `mm_projector.`, `model.` -> `decoder.` and `lm_head.` -> `decoder.lm_head.`: the
module tree of huluexport.reference.model.HuluMed. The patch-embed weight keeps its checkpoint shape
[C, 3, P, P].
"""

from __future__ import annotations

# Stored prefix -> canonical (HF-version) prefix; first match wins, so longer forms come first.
PREFIX_ALIASES: tuple[tuple[str, str], ...] = (
    ("model.vision_encoder.vision_encoder.", "model.vision_encoder."),  # original format (wrapper module)
    ("language_model.model.", "model."),  # vLLM-style dumps
    ("language_model.lm_head.", "lm_head."),
    ("vision_encoder.vision_encoder.", "model.vision_encoder."),
    ("vision_encoder.", "model.vision_encoder."),
    ("mm_projector.", "model.mm_projector."),
)

# Canonical prefix -> reference prefix.
_REF_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_encoder.", "vision_encoder."),
    ("model.mm_projector.", "mm_projector."),
    ("model.", "decoder."),
    ("lm_head.", "decoder.lm_head."),
)

LAYOUTS = ("hf", "original")
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
