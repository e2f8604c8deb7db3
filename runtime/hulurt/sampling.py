"""Next-token choice from one row of logits: greedy, or sampling with temperature, top-k, top-p and a
repetition penalty, seeded (numpy only). The order of the steps follows transformers' logits processors
(repetition penalty -> temperature -> top-k -> top-p), so a seeded run here is comparable in spirit, not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hulurt import checks
from hulurt.errors import HuluRuntimeError, NumericError


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

    @property
    def plain_greedy(self) -> bool:
        """argmax of the unchanged logits: a decoder graph's own argmax output is the answer."""
        return self.greedy and self.repetition_penalty == 1.0

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
    (the most likely token is always kept). The plain full-sort statement of the rule; `Sampler` applies the
    same rule to a candidate set (`nucleus`), and the tests hold the two equal."""
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


def at_least(x: NDArray[np.float64], m: int) -> NDArray[np.intp]:
    """Indices (ascending) of every entry >= the m-th largest of x: the m largest, ties at the border kept."""
    if m >= x.shape[0]:
        return np.arange(x.shape[0])
    return np.flatnonzero(x >= np.partition(x, -m)[-m])


def nucleus(scaled: NDArray[np.float64], weight: NDArray[np.float64], p: float, first: int = 256
            ) -> NDArray[np.intp]:
    """The top-p rule of `filter_top_p` without its stable argsort of the vocabulary. `scaled` [n] are the
    candidates' logits (best 0) in ascending token order, `weight` = exp(scaled). Returns the positions
    (ascending) of the kept tokens.

    - Only the most likely tokens can be kept: if the m best already hold mass >= p, every token after them
      in the sorted order has mass >= p before it and is dropped. So the m best are found by partition
      (m = first, grown eightfold while under n/8 and their mass is short of p), else all n are used.
    - The cut needs sorted values, not sorted ids: equal logits have equal probabilities, so the cumulative
      mass is the same whatever order ties take. It gives the count c of kept tokens and the smallest kept
      logit; the kept tokens are every one above it, then the tokens equal to it in id order up to c, which
      is the full stable sort's choice."""
    n = scaled.shape[0]
    total = float(weight.sum())
    vals = scaled
    m = first
    while m < n // 8:
        top = at_least(scaled, m)
        if float(weight[top].sum()) >= p * total:
            vals = scaled[top]
            break
        m *= 8
    desc = np.sort(vals)[::-1]
    probs = np.exp(desc) / total
    cum = np.cumsum(probs)
    drop = (cum - probs) >= p  # the mass before a token; non-decreasing, so kept tokens form a prefix
    drop[0] = False
    c = int(np.argmax(drop)) if drop.any() else desc.shape[0]
    cut = desc[c - 1]
    above = np.flatnonzero(scaled > cut)
    tied = np.flatnonzero(scaled == cut)[: c - above.shape[0]]
    return np.sort(np.concatenate([above, tied])) if tied.shape[0] else above


def check_logits(logits: NDArray[np.floating]) -> NDArray[np.float32]:
    """logits [vocab] (or [1, vocab]) as a float32 row, or NumericError when a value is NaN or +inf, or all are
    -inf: no token can be chosen from such a row, and an argmax would pick one anyway."""
    row = np.asarray(logits, dtype=np.float32).reshape(-1)  # [1, vocab] -> [vocab]
    bad = int(np.count_nonzero(~(row < np.inf)))  # NaN or +inf (-inf is a probability of 0)
    if bad:
        raise NumericError(f"the decoder returned {bad} of {row.shape[0]} logits that are not finite numbers "
                               f"(NaN or +inf); the bundle or its inputs are broken. {OVERFLOW_HINT}")
    if row.max() == -np.inf:
        raise NumericError("the decoder returned no finite logit (all -inf); the bundle or its inputs are broken")
    return row


# the usual cause in an fp16 bundle; `huluexport verify` reports the checkpoint's fp16 headroom (README)
OVERFLOW_HINT = ("In an fp16 bundle the usual cause is an activation past fp16's range (65504): `huluexport verify "
                 "BUNDLE` prints its fp16 headroom; an fp32 bundle avoids it")


class Sampler:
    """Stateful chooser: holds the seeded generator so a run with the same seed repeats exactly.

    A vocabulary row is ~152k logits, and this runs once per generated token, on the host, next to a GPU
    step of a few milliseconds. So it never sorts or normalises the whole row. Top-k takes the k best by
    partition; top-p sorts the values (not the ids) of a candidate set that holds the nucleus
    (`nucleus`); the draw inverts the
    cumulative weights of the kept tokens with one uniform number, as numpy's `Generator.choice` does.
    The rule is that of the full-sort `filter_top_k` / `filter_top_p`; tests/runtime/test_sampling.py
    holds them equal."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def uniform(self) -> float:
        """The next uniform number in [0, 1) of this sampler's seeded stream: one per sampled (not greedy)
        token, whether the draw then happens here or on the device (hulurt.device_sample)."""
        return float(self._rng.random())

    def __call__(self, logits: NDArray[np.floating], seen: NDArray[np.int64], u: float | None = None) -> int:
        """logits [vocab] (or [1, vocab]) -> next id; `seen` are the ids of the sequence so far. `u`: the
        uniform draw already taken for this token (None: take the next one)."""
        row = check_logits(logits)
        cfg = self.config
        if cfg.repetition_penalty != 1.0:
            row = apply_repetition_penalty(row, seen, cfg.repetition_penalty)
        if cfg.greedy:
            return int(np.argmax(row))
        ids, weight = candidates(row, cfg.temperature, cfg.top_k, cfg.top_p)
        cdf = np.cumsum(weight)
        cdf /= cdf[-1]  # >= 1 before: the best token's weight is exp(0)
        return int(ids[np.searchsorted(cdf, self.uniform() if u is None else u, side="right")])


def candidates(row: NDArray[np.float32], temperature: float, top_k: int, top_p: float
               ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """The tokens a sampler may draw from one logits row and their unnormalised probabilities: ids
    (ascending) and exp((logit - best) / temperature), after top-k then top-p."""
    # float64, shifted so the best logit is 0 before dividing: a tiny temperature gives -inf for the
    # others (probability 0), never inf - inf = NaN as float32 logits / 1e-45 did
    scaled = row.astype(np.float64)
    scaled -= scaled.max()
    scaled /= temperature
    ids = None if top_k <= 0 or top_k >= scaled.shape[0] else at_least(scaled, top_k)
    if ids is not None:
        scaled = scaled[ids]
    weight = np.exp(scaled)
    if top_p < 1.0:
        kept = nucleus(scaled, weight, top_p)
        ids, weight = (kept if ids is None else ids[kept]), weight[kept]
    return (np.arange(scaled.shape[0]) if ids is None else ids), weight
