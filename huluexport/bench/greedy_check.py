"""Greedy agreement of the runtime and the reference, step by step, with the logit margins that explain a
first divergence.

Both sides decode the same request greedily once more, untimed, handing over every logits row (the runtime
through `Model.run(on_logits=...)`, the reference through `HuluMed.steps`). Up to and including the first
step where their tokens differ, both sides saw the same prefix, so their rows can be compared directly:
- the largest absolute logit difference between the sides at each step (the numeric distance of the two
  implementations, e.g. fp16 kernels that sum in another order);
- each side's top-2 margin (how close the decision was).
At a divergence between tokens a (the reference's) and b (the runtime's), the two gaps (a over b in the
reference, b over a in the runtime) say how close the decision was, and the differences of the two deciding
logits between the sides are set against the largest difference over the rest of the row: when a and b moved
no more than the other logits did, the flip comes from the sides' ordinary numeric difference acting on a
near tie ("near_tie"); when they moved more, something differs for those tokens, which needs looking at.
Random-weight models give flat logits and small margins, so a near tie within 16 steps is expected there in
fp16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def top2_margin(row: np.ndarray) -> float:
    """Best logit minus the second best (0 for a tie)."""
    two = np.partition(np.asarray(row, dtype=np.float64).reshape(-1), -2)[-2:]
    return float(two[1] - two[0])


def greedy_check(rt_tokens: Sequence[int], rt_rows: Sequence[np.ndarray], ref_tokens: Sequence[int],
                 ref_rows: Sequence[np.ndarray]) -> dict[str, Any]:
    """Compare two greedy traces (tokens and the logits rows they were chosen from); JSON-ready."""
    n = min(len(rt_tokens), len(ref_tokens), len(rt_rows), len(ref_rows))
    if n == 0:
        raise ValueError("greedy check: a side produced no token")
    first = next((k for k in range(n) if rt_tokens[k] != ref_tokens[k]), None)
    last = n if first is None else first + 1  # steps whose prefix is the same on both sides
    rows = [(np.asarray(rt_rows[k], np.float64).reshape(-1), np.asarray(ref_rows[k], np.float64).reshape(-1))
            for k in range(last)]
    for k, (a, b) in enumerate(rows):
        if a.shape != b.shape:
            raise ValueError(f"greedy check: step {k}: runtime row {a.shape} vs reference row {b.shape}")
    diffs = [float(np.abs(a - b).max()) for a, b in rows]
    out: dict[str, Any] = {
        "steps": n,
        "same_prefix_steps": last,
        "first_divergence": first,
        "max_abs_logit_diff": diffs,
        "runtime_top2_margin": [top2_margin(a) for a, _ in rows],
        "reference_top2_margin": [top2_margin(b) for _, b in rows],
    }
    if first is None:
        out["summary"] = (f"greedy tokens identical for all {n} steps; logits differ by at most "
                          f"{max(diffs):.3g} (smallest reference top-2 margin {min(out['reference_top2_margin']):.3g})")
        return out
    a, b = rows[first]
    rt_tok, ref_tok = int(rt_tokens[first]), int(ref_tokens[first])
    ref_gap, rt_gap = float(b[ref_tok] - b[rt_tok]), float(a[rt_tok] - a[ref_tok])
    moved = np.abs(a - b)
    deciding = max(float(moved[ref_tok]), float(moved[rt_tok]))
    rest = np.delete(moved, [ref_tok, rt_tok])
    rest_max = float(rest.max()) if rest.size else 0.0
    near = deciding <= rest_max
    agreeing = out["reference_top2_margin"][:first]
    out["divergence"] = {
        "step": first,
        "runtime_token": rt_tok,
        "reference_token": ref_tok,
        "reference_gap": ref_gap,  # reference logit of its token minus that of the runtime's
        "runtime_gap": rt_gap,  # runtime logit of its token minus that of the reference's
        "runtime_token_rank_in_reference": int((b > b[rt_tok]).sum()) + 1,
        "deciding_logits_moved": deciding,  # the larger |runtime - reference| of the two tokens
        "rest_of_row_moved": rest_max,  # the largest |runtime - reference| over every other token
        "max_abs_logit_diff_at_step": diffs[first],
        "median_reference_margin_before": float(np.median(agreeing)) if agreeing else None,
        "near_tie": near,
    }
    out["summary"] = (
        f"greedy tokens identical for {first} of {n} steps; at step {first} the reference chose {ref_tok} over "
        f"{rt_tok} by {ref_gap:.3g} and the runtime {rt_tok} over {ref_tok} by {rt_gap:.3g}; the two logits "
        f"differ between the sides by up to {deciding:.3g}, the rest of the row by up to {rest_max:.3g}"
        + (" (a near tie flipped by the sides' ordinary numeric difference)" if near else
           " (NOT a near tie: the deciding logits moved more than the rest of the row; look for a real "
           "discrepancy)")
        + (f"; median reference top-2 margin over the agreeing steps {np.median(agreeing):.3g}" if agreeing else "")
    )
    return out
