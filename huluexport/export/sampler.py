"""The runtime's sampling graph (hulurt/graphs/sampler.onnx): hulurt.sampling's rule in standard ONNX ops, so
that on a GPU the logits row never leaves the device and only the chosen token comes back.

    python -m huluexport.export.runtime_graphs runtime/hulurt/graphs   # rewrite the shipped files

I/O: hulurt.contract.SAMPLER. The arithmetic follows `hulurt.sampling.Sampler` step by step, so the same uniform
draw gives the same token (tests/runtime/test_device_sampler.py):

    row = logits [V] float32, repetition penalty applied in float32 at `seen_ids` (ScatterElements)
    greedy:  the smallest id at the row's maximum        (numpy's argmax; ArgMax's pick among ties is the kernel's)
    scaled = (float64(row) - max) / temperature           [V] float64
    top-k / top-p (either on): the C = min(V, SAMPLER_CANDIDATES) best by TopK (ties: lower id first)
        kept by top-k: value >= the k-th best (ties kept); top-p: the nucleus over the mass of what top-k kept
        (or of the whole row), cut where the mass before a token reaches p; tokens tied at the cut value are
        kept by smallest id, whatever order TopK gave them (fp16 logits tie often)
        kept ids in ascending order (a second TopK on -id), weights exp(scaled), cumulative sum, normalised by
        its last value, token = the first whose cumulative weight exceeds the uniform draw
        exact only if the rule's kept set lies inside the C candidates (else: the host samples this row)
    neither on: the whole row's cumulative sum, in blocks of SAMPLER_BLOCK ids (block sums, then one block),
        the same inverse-CDF draw over ids in ascending order

onnxruntime's CUDA CumSum sums each output element serially from the first (the same order as numpy's
cumsum), but is quadratic in the axis length: the graph never runs it over more than C or SAMPLER_BLOCK values.
"""

from __future__ import annotations

import numpy as np
import onnx
from hulurt.contract import SAMPLER, SAMPLER_BLOCK, SAMPLER_CANDIDATES, SAMPLER_PARAMS
from onnx import TensorProto

from huluexport.export.nodes import NodeBuilder

F64, F32, I64 = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT64


def sampler_model(candidates: int = SAMPLER_CANDIDATES, block: int = SAMPLER_BLOCK) -> onnx.ModelProto:
    """The sampling graph (see the module doc)."""
    g = NodeBuilder("/sampler")

    def i64(name: str, v: int | list[int]) -> str:
        return g.const(name, np.array(v, dtype=np.int64))

    def f64(name: str, v: float) -> str:
        return g.const(name, np.array(v, dtype=np.float64))

    def param(name: str) -> str:
        return g.op("Gather", ["params", i64(f"param_{name}", SAMPLER_PARAMS.index(name))], f"param/{name}", axis=0)

    def count_true(mask: str, name: str) -> str:
        """How many of `mask` are true (int64 scalar); summed as float64, exact below 2**53."""
        n = g.op("ReduceSum", [g.op("Cast", [mask], f"{name}/f64", to=F64)], f"{name}/sum", keepdims=0)
        return g.op("Cast", [n], f"{name}/i64", to=I64)

    def count_at_most(values: str, limit: str, name: str) -> str:
        """How many of `values` are <= `limit` (int64 scalar)."""
        return count_true(g.op("LessOrEqual", [values, limit], f"{name}/le"), name)

    zero, one, minus1 = i64("zero", 0), i64("one", 1), i64("minus1", [-1])
    axis0 = i64("axis0", [0])

    # repetition penalty (float32, as Sampler): divide a positive logit, multiply a negative one
    row = g.op("Reshape", ["logits", minus1], "row")  # [V]
    pen = g.op("Cast", [param("repetition_penalty")], "penalty_f32", to=F32)
    seen = g.op("Gather", [row, "seen_ids"], "seen_logits", axis=0)
    neg = g.op("Less", [seen, g.const("zero_f32", np.array(0.0, np.float32))], "seen_negative")
    penalised = g.op("Where", [neg, g.op("Mul", [seen, pen], "seen_mul"), g.op("Div", [seen, pen], "seen_div")],
                     "seen_penalised")
    row = g.op("ScatterElements", [row, "seen_ids", penalised], "row_penalised", axis=0)

    # health: every logit < +inf (NaN fails too) and at least one > -inf
    finite = g.op("Cast", [g.op("Less", [row, g.const("inf_f32", np.array(np.inf, np.float32))], "below_inf")],
                  "below_inf_f32", to=F32)
    all_finite = g.op("Equal", [g.op("ReduceMin", [finite, axis0], "all_below_inf", keepdims=0),
                                g.const("one_f32", np.array(1.0, np.float32))], "all_finite")
    best = g.op("ReduceMax", [row, axis0], "best", keepdims=0)  # f32 scalar
    some_finite = g.op("Greater", [best, g.const("ninf_f32", np.array(-np.inf, np.float32))], "some_finite")
    healthy = g.op("And", [all_finite, some_finite], "healthy")
    # greedy: the smallest id at the maximum (numpy's argmax), not ArgMax, whose pick among ties is the kernel's
    vocab_1 = g.op("Shape", [row], "vocab_1")  # [1]
    vocab = g.op("Squeeze", [vocab_1, axis0], "vocab")
    row_ids = g.op("Cast", [g.op("Range", [zero, vocab, one], "row_ids_i64")], "row_ids", to=F32)  # exact < 2**24
    at_best = g.op("Where", [g.op("Equal", [row, best], "is_best"), row_ids, g.const("inf_id", np.array(np.inf,
                            np.float32))], "best_ids")
    greedy_token = g.op("Cast", [g.op("ReduceMin", [at_best, axis0], "first_best", keepdims=0)], "greedy_token",
                        to=I64)

    # scaled logits, float64, best = 0 before dividing by the temperature (Sampler's order of operations)
    wide = g.op("Cast", [row], "row_f64", to=F64)
    shifted = g.op("Sub", [wide, g.op("Cast", [best], "best_f64", to=F64)], "shifted")
    scaled = g.op("Div", [shifted, param("temperature")], "scaled")  # [V]
    weight_all = g.op("Exp", [scaled], "weight_all")  # [V]
    n_cand_1 = g.op("Min", [vocab_1, i64("candidates", [candidates])], "n_candidates_1")
    n_cand = g.op("Squeeze", [n_cand_1, axis0], "n_candidates")
    last_cand = g.op("Sub", [n_cand, one], "last_candidate")
    cand_vals, cand_ids = g.ops("TopK", [scaled, n_cand_1], "candidates", 2, axis=0, largest=1, sorted=1)

    # top-k: keep values >= the k-th best (ties kept), when 0 < k < V
    k = g.op("Cast", [param("top_k")], "k", to=I64)
    k_on = g.op("And", [g.op("Greater", [k, zero], "k_positive"), g.op("Less", [k, vocab], "k_below_vocab")], "k_on")
    k_at = g.op("Sub", [g.op("Max", [g.op("Min", [k, n_cand], "k_capped"), one], "k_clipped"), one], "k_index")
    kth = g.op("Gather", [cand_vals, k_at], "kth_value", axis=0)
    in_k = g.op("Or", [g.op("Not", [k_on], "k_off"),
                       g.op("GreaterOrEqual", [cand_vals, kth], "at_least_kth")], "in_top_k")
    border = g.op("Gather", [cand_vals, last_cand], "border_value", axis=0)
    all_candidates = g.op("Equal", [n_cand, vocab], "all_candidates")
    k_inside = g.op("And", [g.op("LessOrEqual", [k, n_cand], "k_fits"),
                            g.op("Or", [all_candidates, g.op("Less", [border, kth], "ties_end_inside")],
                                 "k_ties_inside")], "k_inside")
    k_exact = g.op("And", [k_on, k_inside], "k_exact")

    # top-p over the mass of what top-k kept (the whole row without top-k)
    zero_f64 = f64("zero_f64", 0.0)
    cand_w = g.op("Exp", [cand_vals], "candidate_weight")  # [C]
    w_k = g.op("Where", [in_k, cand_w, zero_f64], "weight_top_k")
    total = g.op("Where", [k_on, g.op("ReduceSum", [w_k, axis0], "mass_top_k", keepdims=0),
                           g.op("ReduceSum", [weight_all, axis0], "mass_row", keepdims=0)], "mass")
    p = param("top_p")
    p_on = g.op("Less", [p, f64("one_f64", 1.0)], "p_on")
    probs = g.op("Div", [w_k, total], "probs")
    cum = g.op("CumSum", [probs, zero], "cumulative")
    drop = g.op("GreaterOrEqual", [g.op("Sub", [cum, probs], "mass_before"), p], "drop")
    # the nucleus is the first n_keep positions in value order; which tokens tie at its last value is left to
    # ids (Sampler's rule), not to TopK's order among equal values: every token above the cut value, then the
    # m = n_keep - n_above smallest ids among those equal to it
    position = g.op("Range", [zero, n_cand, one], "position")
    first = g.op("Equal", [position, zero], "first")
    n_keep = count_true(g.op("Or", [g.op("Not", [drop], "not_dropped"), first], "in_nucleus_prefix"), "n_keep")
    cut = g.op("Gather", [cand_vals, g.op("Sub", [n_keep, one], "cut_index")], "cut_value", axis=0)
    above = g.op("Greater", [cand_vals, cut], "above_cut")
    tie = g.op("Equal", [cand_vals, cut], "at_cut")
    neg_id = g.op("Neg", [g.op("Cast", [cand_ids], "candidate_id_f32", to=F32)], "neg_id")  # ids < 2**24: exact
    ninf_key = g.const("ninf_key", np.array(-np.inf, np.float32))
    tie_keys, _ = g.ops("TopK", [g.op("Where", [tie, neg_id, ninf_key], "tie_keys_raw"), n_cand_1], "tie_order", 2,
                        axis=0, largest=1, sorted=1)  # -id of the tied tokens, smallest id first
    m_index = g.op("Sub", [g.op("Sub", [n_keep, count_true(above, "n_above")], "n_tied_kept"), one], "tie_index")
    last_tied = g.op("Gather", [tie_keys, m_index], "last_tied_key", axis=0)
    kept_tie = g.op("And", [tie, g.op("GreaterOrEqual", [neg_id, last_tied], "tie_id_small")], "tie_kept")
    in_p = g.op("Or", [g.op("Not", [p_on], "p_off"), g.op("Or", [above, kept_tie], "in_nucleus")], "in_top_p")
    kept = g.op("And", [in_k, in_p], "kept")
    # exact without top-k when the nucleus closes inside the candidates and its tie group ends inside them too
    p_closes = g.op("And", [p_on, g.op("Gather", [drop, last_cand], "nucleus_closes", axis=0)], "p_closes")
    cut_inside = g.op("Or", [all_candidates, g.op("Less", [border, cut], "cut_ties_inside")], "cut_inside")
    p_exact = g.op("And", [g.op("Not", [k_on], "no_top_k"), g.op("And", [p_closes, cut_inside], "p_inside")],
                   "p_exact")
    cand_exact = g.op("Or", [all_candidates, g.op("Or", [k_exact, p_exact], "filter_exact")], "candidates_exact")

    # the draw over the kept candidates, ids ascending: TopK of -id puts them first, the rest (-inf) after
    keys = g.op("Where", [kept, neg_id, ninf_key], "order_keys")
    _, order = g.ops("TopK", [keys, n_cand_1], "id_order", 2, axis=0, largest=1, sorted=1)
    w_sorted = g.op("Gather", [g.op("Where", [kept, cand_w, zero_f64], "weight_kept"), order], "weight_sorted",
                    axis=0)
    cdf = g.op("CumSum", [w_sorted, zero], "cdf")
    cdf_n = g.op("Div", [cdf, g.op("Gather", [cdf, last_cand], "cdf_last", axis=0)], "cdf_normalised")
    u = param("uniform")
    at = g.op("Min", [count_at_most(cdf_n, u, "cand_draw"), last_cand], "cand_draw_index")
    cand_token = g.op("Gather", [cand_ids, g.op("Gather", [order, at], "cand_draw_position", axis=0)],
                      "cand_token", axis=0)

    # no filter: the whole row in blocks (padded with zero weights), block sums first, then the one block
    blk = i64("block", block)
    pad = g.op("Mod", [g.op("Sub", [blk, g.op("Mod", [vocab, blk], "vocab_mod")], "pad_raw"), blk], "pad")
    pad_after = g.op("Unsqueeze", [pad, axis0], "pad_after")
    pads = g.op("Concat", [g.op("Unsqueeze", [zero, axis0], "pad_before"), pad_after], "pads", axis=0)
    padded = g.op("Pad", [weight_all, pads, zero_f64], "weight_padded", mode="constant")
    blocks = g.op("Reshape", [padded, i64("block_shape", [-1, block])], "blocks")  # [nb, B]
    block_mass = g.op("ReduceSum", [blocks, i64("axis1", [1])], "block_mass", keepdims=0)  # [nb]
    block_cdf = g.op("CumSum", [block_mass, zero], "block_cdf")
    n_blocks = g.op("Squeeze", [g.op("Shape", [block_cdf], "n_blocks_1"), axis0], "n_blocks")
    row_mass = g.op("Gather", [block_cdf, g.op("Sub", [n_blocks, one], "last_block")], "row_mass", axis=0)
    target = g.op("Mul", [u, row_mass], "target")  # a block is passed while its end is <= u * mass
    b_at = g.op("Min", [count_at_most(block_cdf, target, "block_draw"), g.op("Sub", [n_blocks, one],
                                                                              "last_block_2")], "block_index")
    before = g.op("Gather", [g.op("Concat", [g.op("Unsqueeze", [zero_f64, axis0], "zero_1"), block_cdf],
                                  "block_starts", axis=0), b_at], "mass_before_block", axis=0)
    local = g.op("Add", [g.op("CumSum", [g.op("Gather", [blocks, b_at], "block_weights", axis=0), zero],
                              "block_local_cdf"), before], "block_cdf_in")
    local_n = g.op("Div", [local, row_mass], "block_cdf_normalised")
    in_block = g.op("Min", [count_at_most(local_n, u, "row_draw"), g.op("Sub", [blk, one], "block_last")],
                    "row_draw_index")
    row_token = g.op("Min", [g.op("Add", [g.op("Mul", [b_at, blk], "block_start"), in_block], "row_token_raw"),
                             g.op("Sub", [vocab, one], "last_id")], "row_token")

    greedy = g.op("Greater", [param("greedy"), f64("half", 0.5)], "greedy")
    whole_row = g.op("Not", [g.op("Or", [k_on, p_on], "filtered")], "whole_row")
    sampled = g.op("Where", [whole_row, row_token, cand_token], "sampled")
    token = g.op("Where", [greedy, greedy_token, sampled], "token_scalar")
    g.op("Unsqueeze", [token, axis0], "token", outputs=["token"])
    exact = g.op("And", [healthy, g.op("Or", [greedy, g.op("Or", [whole_row, cand_exact], "rule_exact")],
                                        "way_exact")], "exact_scalar")
    g.op("Unsqueeze", [exact, axis0], "exact", outputs=["exact"])

    return g.model(SAMPLER, f"hulurt sampling graph: greedy, temperature, top-k, top-p and repetition penalty over "
                   f"{candidates} candidates (hulurt.sampling's rule); params {', '.join(SAMPLER_PARAMS)}")
