"""How a request's two big calls are split, and what each piece costs in memory: the vision graph over batches
of frames, the decoder prefill over chunks of the prompt (docs/cli.md, "Volumes: vision batches and prefill
chunks").

Both splits are exact. The vision encoder attends within one frame, so frames can go through the graph in any
grouping; the token-reduction mask is computed on the host over the whole input beforehand, so it still
compares consecutive frames across batch borders. A prefill chunk attends to the KV cache of every earlier
chunk, which is what the decoder graph's `past` inputs are for.

The byte formulas here are the single cost model of activations: `huluexport plan` imports them
(huluexport/plan/cost.py) and the runtime picks its default batch and chunk with them, so the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A default split may give one call's activations this share of the memory available when the request starts
# (Linux MemAvailable: the bundle's weights are already resident and not in it). The rest covers what the
# activation formulas leave out (the request's patches, kept rows, KV cache, the decoder's arena beside the
# vision calls) and the host's other work. A fifth: the rule and what it gives are in docs/inputs.md ("Vision
# batches and prefill chunks"); on the 24 GB test host it keeps a 160-slice CT through the 7B-width 2-layer
# fp32 slice under 10 GB (benchmarks/results/volume_160.md, the "default" row).
BUDGET_FRACTION = 0.2


@dataclass(frozen=True)
class ModelShape:
    """The widths the activation formulas need (a bundle's manifest `model` section, or a HuluConfig)."""

    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    patch_dim: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_manifest_model(cls, model: Mapping[str, Any], patch_dim: int) -> ModelShape | None:
        """From manifest.model (None when the section lacks a width: the runtime then splits nothing)."""
        try:
            v, d = model["vision"], model["decoder"]
            return cls(int(v["hidden"]), int(v["heads"]), int(v["intermediate"]), int(patch_dim),
                       int(d["hidden"]), int(d["heads"]), int(d["kv_heads"]), int(d["head_dim"]),
                       int(d["intermediate"]), int(d["vocab"]))
        except (KeyError, TypeError, ValueError):
            return None


# onnxruntime's CPU allocation plan for one vision call, counted per node from its profiler (mem_in_use_delta of
# every kernel, 1, 4 and 16 frames of 400 patches, the 7B-width vision piece; benchmarks/results/volume_memory.md).
# At its peak, the MLP of the first encoder layer (later layers reuse these buffers), the arena holds buffers of
# the [frames, patches, vision_hidden] stream ("h") for: the patch embedding and its bias add (2), the key
# projection and its bias add (2), the key's rotary embedding (split 1, negated half 0.5, concat 1, product 1,
# sum 1; the query's reuses them), the key and query transposes (2), the attention-weighted values (1), and
# FusedMatMul's workspace beside the scores (1.5): 13 h, plus 0.5 h of arena rounding measured at 16 frames.
ORT_CPU_VISION_STREAM_BUFFERS = 13.5
# ... one [frames, heads, patches, patches] score buffer (the softmax runs in place in it) and three
# [frames, patches, vision_intermediate] buffers: fc1's output, FastGelu's output and FastGelu's scratch.
ORT_CPU_VISION_MLP_BUFFERS = 3


def vision_activation_bytes(
    s: ModelShape, frames: int, patches_per_frame: int, out_rows: int, act_bytes: int, fused_attention: bool
) -> dict[str, int]:
    """Peak live bytes of one vision call over `frames` frames of `patches_per_frame` patches each, with
    `out_rows` projected rows of width `hidden` alive at the end, plus the call's fp32 input patches.

    fused_attention (GPU engines): at the peak of one encoder layer, the residual + normed stream, then either
    q/k/v/out or the MLP hidden twice (fc1 out, gelu out). Unfused (onnxruntime on a CPU): onnxruntime's
    allocation plan as measured (ORT_CPU_VISION_*), the score buffer included.
    """
    if frames == 0:
        return {"total": 0, "attention_scores_unfused": 0}
    t, n = frames, patches_per_frame
    patches = t * n * s.patch_dim * 4
    h = t * n * s.vision_hidden * act_bytes
    score = t * s.vision_heads * n * n * act_bytes
    mlp = t * n * s.vision_intermediate * act_bytes
    out = out_rows * s.hidden * act_bytes
    if fused_attention:
        body = 2 * h + max(4 * h, 2 * mlp)
    else:
        body = int(ORT_CPU_VISION_STREAM_BUFFERS * h) + score + ORT_CPU_VISION_MLP_BUFFERS * mlp
    return {"total": patches + body + out, "attention_scores_unfused": score}


def prefill_activation_bytes(
    s: ModelShape, seq: int, act_bytes: int, fused_attention: bool, past: int = 0
) -> dict[str, int]:
    """Peak live bytes of one decoder call over `seq` new tokens after `past` cached ones (the KV cache itself
    is counted separately): the stream, then attention (q, k, v, out; unfused: scores and softmax of every
    new query against every key) or the MLP (gate, up, product), plus the last position's logits."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    stream = 2 * seq * s.hidden * act_bytes
    scores = 2 * s.heads * seq * (past + seq) * act_bytes
    attn = seq * (q + 2 * kv + q) * act_bytes + (0 if fused_attention else scores)
    mlp = 3 * seq * s.intermediate * act_bytes
    logits = s.vocab * 4  # last position only (contract)
    return {"total": stream + max(attn, mlp) + logits, "attention_scores_unfused": scores}


def chunks(total: int, size: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `size` (None or >= total: one range) covering 0..total."""
    if total <= 0:
        return []
    step = total if size is None or size >= total else size
    return [(a, min(a + step, total)) for a in range(0, total, step)]


def available_bytes() -> int | None:
    """The host memory available to new allocations (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def largest_fitting(cost: Any, limit: int, budget: int) -> int:
    """The largest n in 1..limit with cost(n) <= budget (cost grows with n); 1 when even that does not fit."""
    lo, hi = 1, max(limit, 1)
    if cost(hi) <= budget:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def vision_batch_for(s: ModelShape, frames: int, patches_per_frame: int, act_bytes: int, budget: int,
                     fused_attention: bool = False) -> int:
    """Most frames per vision call whose activations fit `budget` bytes (the kept rows are held apart)."""
    return largest_fitting(
        lambda t: vision_activation_bytes(s, t, patches_per_frame, 0, act_bytes, fused_attention)["total"],
        frames, budget)


def prefill_chunk_for(s: ModelShape, prompt: int, act_bytes: int, budget: int,
                      fused_attention: bool = False) -> int:
    """Most prompt tokens per prefill call whose activations fit `budget` bytes, the last chunk (attending to
    the whole prompt) being the largest."""
    return largest_fitting(
        lambda c: prefill_activation_bytes(s, c, act_bytes, fused_attention, past=prompt - c)["total"],
        prompt, budget)


def default_budget() -> int | None:
    """Activation budget of a default split: BUDGET_FRACTION of the available host memory; None (no split)
    where that is unknown."""
    avail = available_bytes()
    return None if avail is None else int(avail * BUDGET_FRACTION)
