"""Next-token choice from one row of logits: greedy, or sampling with temperature, top-k, top-p and a
repetition penalty, seeded (numpy only). The order of the steps follows transformers' logits processors
(repetition penalty -> temperature -> top-k -> top-p), so a seeded run here is comparable in spirit, not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hulurt import checks
from hulurt.errors import HuluRuntimeError


class SamplingError(HuluRuntimeError, ValueError):
    """A sampling parameter outside its valid range."""


@dataclass(frozen=True)
class SamplingConfig:
    """greedy=True ignores every other field except repetition_penalty."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; >1 discourages tokens already in the sequence
    seed: int | None = None

    def __post_init__(self) -> None:
        # the same checks as the command line's options (hulurt.options), so the API refuses the same values
        for field in ("temperature", "top_k", "top_p", "repetition_penalty", "seed"):
            reason = getattr(checks, field)(getattr(self, field))
            if reason is not None:
                raise SamplingError(f"{field} {reason}")


def apply_repetition_penalty(
    logits: NDArray[np.float32], seen: NDArray[np.int64], penalty: float
) -> NDArray[np.float32]:
    """transformers' rule: for every distinct id already in the sequence, divide a positive logit by the
    penalty and multiply a negative one by it. Returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or seen.size == 0:
        return out
    ids = np.unique(seen)
    ids = ids[(ids >= 0) & (ids < out.shape[-1])]
    vals = out[ids]
    out[ids] = np.where(vals < 0, vals * np.float32(penalty), vals / np.float32(penalty))
    return out


def filter_top_k(logits: NDArray[np.floating], k: int) -> NDArray[np.floating]:
    """Keep the k largest logits (ties at the k-th value kept too), the rest -> -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def filter_top_p(logits: NDArray[np.floating], p: float) -> NDArray[np.floating]:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass reaches p
    (the most likely token is always kept)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    cum = np.cumsum(probs)
    # a token is dropped when the mass before it already reaches p
    drop_sorted = (cum - probs) >= p
    drop_sorted[0] = False
    out = logits.copy()
    out[order[drop_sorted]] = -np.inf
    return out


def softmax(x: NDArray[np.floating]) -> NDArray[np.float64]:
    z = np.asarray(x, dtype=np.float64)
    z = z - np.max(z)
    e = np.exp(z)
    return e / e.sum()


class Sampler:
    """Stateful chooser: holds the seeded generator so a run with the same seed repeats exactly."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def __call__(self, logits: NDArray[np.floating], seen: NDArray[np.int64]) -> int:
        """logits [vocab] (or [1, vocab]) -> next id; `seen` are the ids of the sequence so far."""
        row = np.asarray(logits, dtype=np.float32).reshape(-1)  # [1, vocab] -> [vocab]
        if not np.isfinite(row).any():
            raise HuluRuntimeError("the decoder returned no finite logit; the bundle or its inputs are broken")
        cfg = self.config
        if cfg.repetition_penalty != 1.0:
            row = apply_repetition_penalty(row, seen, cfg.repetition_penalty)
        if cfg.greedy:
            return int(np.argmax(row))
        # float64, shifted so the best logit is 0 before dividing: a tiny temperature gives -inf for the
        # others (probability 0), never inf - inf = NaN as float32 logits / 1e-45 did
        scaled = (row.astype(np.float64) - np.max(row)) / cfg.temperature
        probs = softmax(filter_top_p(filter_top_k(scaled, cfg.top_k), cfg.top_p))
        return int(self._rng.choice(probs.shape[0], p=probs))
