"""Every parity tolerance of the project, in one table, each with its reason.

Keyed by (piece, precision, backend). Loosening an entry needs the measured numbers in the commit message;
a tolerance is never changed to make CI pass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None  # logits only: fraction of positions whose argmax agrees
    reason: str = ""


TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    # reference vs independent oracles (transformers), same weights copied through our weight map
    ("decoder", "fp32", "transformers"): Tolerance(
        max_abs=1e-5, reason="same math in fp32; only op order (fused vs split matmuls) differs"
    ),
    ("vision", "fp32", "transformers"): Tolerance(
        max_abs=1e-5, reason="same math in fp32; matmul patch embed vs conv, batched vs packed attention"
    ),
}


def get(piece: str, precision: str, backend: str) -> Tolerance:
    return TOLERANCES[(piece, precision, backend)]
