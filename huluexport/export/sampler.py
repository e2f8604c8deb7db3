"""The runtime's sampling graph (hulurt/graphs/sampler.onnx): hulurt.sampling's rule in standard ONNX ops, so
that on a GPU the logits row never leaves the device and only the chosen token comes back.

    python -m huluexport.export.runtime_graphs runtime/hulurt/graphs   # rewrite the shipped files

I/O: hulurt.contract.SAMPLER. The arithmetic follows `hulurt.sampling.Sampler` step by step, so the same uniform
draw gives the same token (tests/runtime/test_device_sampler.py):

    row = logits [V] float32, repetition penalty applied in float32 at `seen_ids` (ScatterElements)
    greedy:  the smallest id at the row's maximum        (numpy's argmax; ArgMax's pick among ties is the kernel's)
    scaled = (float64(row) - max) / temperature           [V] float64
    top-k / top-p (either on), candidates: the C = min(V, SAMPLER_CANDIDATES) best by TopK of the float32 row
        kept by top-k: value >= the k-th best (ties kept); top-p: the nucleus over the mass of what top-k kept
        (or of the whole row), cut where the mass before a token reaches p; tokens tied at the cut value are
        kept by smallest id, whatever order TopK gave them (fp16 logits tie often)
        kept ids in ascending order (a second TopK on -id), weights exp(scaled), cumulative sum, normalised by
        its last value, token = the first whose cumulative weight exceeds the uniform draw
    top-k / top-p whose kept set may reach past the C candidates, the whole row (an If: only such rows pay for it):
        the float32 row sorted by TopK(k = V) and scaled; the k-th value and the nucleus cut from it, the
        cumulative mass in blocks; the tokens tied at the cut ranked by id with a blocked cumulative count; the
        draw as below, over the kept tokens' weights (the others 0)
    neither on: the whole row's cumulative sum, in blocks of SAMPLER_BLOCK ids (block sums, then one block),
        the same inverse-CDF draw over ids in ascending order
    exact: the row is finite, and every comparison of a sum with a threshold (the mass before the first dropped
        and the last kept token against p, the chosen token's cumulative weight and its predecessor's against the
        uniform number) clears it by more than SAMPLER_MARGIN, so a sum taken in another order (the host's) falls
        on the same side

onnxruntime's CUDA CumSum sums each output element serially from the first (the same order as numpy's
cumsum), but is quadratic in the axis length: the graph never runs it over more than C or SAMPLER_BLOCK values.
"""

from __future__ import annotations

import numpy as np
import onnx
from hulurt.contract import SAMPLER, SAMPLER_BLOCK, SAMPLER_CANDIDATES, SAMPLER_MARGIN, SAMPLER_PARAMS
from onnx import TensorProto

from huluexport.export.nodes import NodeBuilder

F64, F32, I64, BOOL = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


class _Ops:
    """Node patterns the main graph and its whole-row branch share, each on its own NodeBuilder (a branch's
    values are named under its own prefix and read the main graph's by name)."""

    def __init__(self, g: NodeBuilder) -> None:
        self.g = g

    def i64(self, name: str, v: int | list[int]) -> str:
        return self.g.const(name, np.array(v, dtype=np.int64))

    def f64(self, name: str, v: float) -> str:
        return self.g.const(name, np.array(v, dtype=np.float64))

    def count_true(self, mask: str, name: str) -> str:
        """How many of `mask` are true (int64 scalar); summed as float64, exact below 2**53."""
        g = self.g
        n = g.op("ReduceSum", [g.op("Cast", [mask], f"{name}/f64", to=F64)], f"{name}/sum", keepdims=0)
        return g.op("Cast", [n], f"{name}/i64", to=I64)

    def count_at_most(self, values: str, limit: str, name: str) -> str:
        """How many of `values` are <= `limit` (int64 scalar)."""
        return self.count_true(self.g.op("LessOrEqual", [values, limit], f"{name}/le"), name)

    def clears(self, high: str, low: str, margin: str, name: str) -> str:
        """high - low > margin (bool scalar)."""
        g = self.g
        return g.op("Greater", [g.op("Sub", [high, low], f"{name}/gap"), margin], name)

    def blocks(self, x: str, v: "_RowShape", name: str) -> str:
        """A [V] float64 row as [nb, B] blocks, padded with zeros."""
        g = self.g
        return g.op("Reshape", [g.op("Pad", [x, v.pads, v.zero_f64], f"{name}/padded", mode="constant"),
                                v.block_shape], f"{name}/blocks")

    def blocked_cumsum(self, x: str, v: "_RowShape", name: str) -> str:
        """The cumulative sum of a [V] float64 row in blocks of B (local sums plus the sums of the blocks before),
        so no CumSum axis is longer than B or the number of blocks."""
        g = self.g
        blocks = self.blocks(x, v, name)
        local = g.op("CumSum", [blocks, v.one], f"{name}/local")  # along axis 1
        before = g.op("CumSum", [g.op("ReduceSum", [blocks, v.axis1], f"{name}/block_sums", keepdims=0), v.zero],
                      f"{name}/block_starts", exclusive=1)  # [nb]
        summed = g.op("Add", [local, g.op("Unsqueeze", [before, v.axis1], f"{name}/starts_col")], f"{name}/sum")
        flat = g.op("Reshape", [summed, v.minus1], f"{name}/flat")
        return g.op("Slice", [flat, v.start0, v.vocab_1], f"{name}/cumsum")

    def draw_row(self, weights: str, u: str, v: "_RowShape", name: str) -> tuple[str, str]:
        """Inverse-CDF draw over a whole [V] row of float64 weights (ids ascending, zeros never drawn): the block
        where u * mass falls (block sums), then the token inside it (one CumSum of B). Returns the token (int64
        scalar) and whether its cumulative weight and its predecessor's clear u by the margin."""
        g = self.g
        blocks = self.blocks(weights, v, name)
        block_mass = g.op("ReduceSum", [blocks, v.axis1], f"{name}/block_mass", keepdims=0)  # [nb]
        block_cdf = g.op("CumSum", [block_mass, v.zero], f"{name}/block_cdf")
        n_blocks = g.op("Squeeze", [g.op("Shape", [block_cdf], f"{name}/n_blocks_1"), v.axis0], f"{name}/n_blocks")
        last_block = g.op("Sub", [n_blocks, v.one], f"{name}/last_block")
        row_mass = g.op("Gather", [block_cdf, last_block], f"{name}/row_mass", axis=0)
        target = g.op("Mul", [u, row_mass], f"{name}/target")  # a block is passed while its end is <= u * mass
        b_at = g.op("Min", [self.count_at_most(block_cdf, target, f"{name}/block_draw"), last_block],
                    f"{name}/block_index")
        before = g.op("Gather", [g.op("Concat", [g.op("Unsqueeze", [v.zero_f64, v.axis0], f"{name}/zero_1"),
                                                  block_cdf], f"{name}/block_starts", axis=0), b_at],
                      f"{name}/mass_before_block", axis=0)
        local = g.op("Add", [g.op("CumSum", [g.op("Gather", [blocks, b_at], f"{name}/block_weights", axis=0),
                                             v.zero], f"{name}/local_cdf"), before], f"{name}/cdf_in_block")
        local_n = g.op("Div", [local, row_mass], f"{name}/cdf_normalised")
        at = g.op("Min", [self.count_at_most(local_n, u, f"{name}/draw"), v.block_last], f"{name}/draw_index")
        token = g.op("Min", [g.op("Add", [g.op("Mul", [b_at, v.block], f"{name}/block_start"), at],
                                  f"{name}/token_raw"), v.last_id], f"{name}/token")
        high = g.op("Gather", [local_n, at], f"{name}/cdf_at", axis=0)
        low = g.op("Where", [g.op("Equal", [at, v.zero], f"{name}/first_in_block"),
                             g.op("Div", [before, row_mass], f"{name}/block_start_normalised"),
                             g.op("Gather", [local_n, g.op("Max", [g.op("Sub", [at, v.one], f"{name}/prev_raw"),
                                                                   v.zero], f"{name}/prev")],
                                  f"{name}/cdf_before", axis=0)], f"{name}/cdf_low")
        clear = g.op("And", [self.clears(high, u, v.margin, f"{name}/above_u"),
                             self.clears(u, low, v.margin, f"{name}/below_u")], f"{name}/clear")
        return token, clear

    def cut_clear(self, mass_before: str, n_keep: str, n: str, p: str, v: "_RowShape", name: str) -> str:
        """The top-p cut is sure: the last kept token's mass before it lies below p by the margin (or it is the
        first, always kept), and the first dropped one's lies above p by it (or none is dropped)."""
        g = self.g
        last_kept = g.op("Sub", [n_keep, v.one], f"{name}/last_kept")
        below = g.op("Or", [g.op("Equal", [last_kept, v.zero], f"{name}/only_first"),
                            self.clears(p, g.op("Gather", [mass_before, last_kept], f"{name}/mass_kept", axis=0),
                                        v.margin, f"{name}/kept_clear")], f"{name}/below")
        first_dropped = g.op("Min", [n_keep, g.op("Sub", [n, v.one], f"{name}/last")], f"{name}/first_dropped")
        above = g.op("Or", [g.op("Equal", [n_keep, n], f"{name}/none_dropped"),
                            self.clears(g.op("Gather", [mass_before, first_dropped], f"{name}/mass_dropped",
                                             axis=0), p, v.margin, f"{name}/dropped_clear")], f"{name}/above")
        return g.op("And", [below, above], f"{name}/clear")


class _RowShape:
    """Constants and shape values of the main graph that the row-wide patterns use (the branch reads them)."""

    def __init__(self, o: _Ops, logits: str, block: int, margin: float) -> None:
        g = o.g
        self.zero, self.one, self.minus1 = o.i64("zero", 0), o.i64("one", 1), o.i64("minus1", [-1])
        self.axis0, self.axis1, self.start0 = o.i64("axis0", [0]), o.i64("axis1", [1]), o.i64("start0", [0])
        self.zero_f64 = o.f64("zero_f64", 0.0)
        self.margin = o.f64("margin", margin)
        self.block = o.i64("block", block)
        self.block_last = o.i64("block_last", block - 1)
        self.block_shape = o.i64("block_shape", [-1, block])
        self.vocab_1 = g.op("Shape", [logits], "vocab_1", start=1)  # [1]
        self.vocab = g.op("Squeeze", [self.vocab_1, self.axis0], "vocab")
        self.last_id = g.op("Sub", [self.vocab, self.one], "last_id")
        pad = g.op("Mod", [g.op("Sub", [self.block, g.op("Mod", [self.vocab, self.block], "vocab_mod")], "pad_raw"),
                           self.block], "pad")
        self.pads = g.op("Concat", [g.op("Unsqueeze", [self.zero, self.axis0], "pad_before"),
                                    g.op("Unsqueeze", [pad, self.axis0], "pad_after")], "pads", axis=0)


def sampler_model(candidates: int = SAMPLER_CANDIDATES, block: int = SAMPLER_BLOCK,
                  margin: float = SAMPLER_MARGIN) -> onnx.ModelProto:
    """The sampling graph (see the module doc). The parameters exist for tests (a graph with few candidates takes
    the whole-row branch on small rows; a margin of 1 sends every sampled row to the host)."""
    g = NodeBuilder("/sampler")
    o = _Ops(g)

    def param(name: str) -> str:
        return g.op("Gather", ["params", o.i64(f"param_{name}", SAMPLER_PARAMS.index(name))], f"param/{name}", axis=0)

    v = _RowShape(o, "logits", block, margin)
    zero, one, axis0, zero_f64 = v.zero, v.one, v.axis0, v.zero_f64
    row = g.op("Reshape", ["logits", v.minus1], "row")  # [V]
    # repetition penalty (float32, as Sampler): divide a positive logit, multiply a negative one
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
    vocab_1, vocab = v.vocab_1, v.vocab
    row_ids = g.op("Cast", [g.op("Range", [zero, vocab, one], "row_ids_i64")], "row_ids", to=F32)  # exact < 2**24
    at_best = g.op("Where", [g.op("Equal", [row, best], "is_best"), row_ids, g.const("inf_id", np.array(np.inf,
                            np.float32))], "best_ids")
    greedy_token = g.op("Cast", [g.op("ReduceMin", [at_best, axis0], "first_best", keepdims=0)], "greedy_token",
                        to=I64)

    # scaled logits, float64, best = 0 before dividing by the temperature (Sampler's order of operations)
    wide = g.op("Cast", [row], "row_f64", to=F64)
    best_f64, temperature = g.op("Cast", [best], "best_f64", to=F64), param("temperature")
    scaled = g.op("Div", [g.op("Sub", [wide, best_f64], "shifted"), temperature], "scaled")  # [V]
    weight_all = g.op("Exp", [scaled], "weight_all")  # [V]
    n_cand_1 = g.op("Min", [vocab_1, o.i64("candidates", [candidates])], "n_candidates_1")
    n_cand = g.op("Squeeze", [n_cand_1, axis0], "n_candidates")
    last_cand = g.op("Sub", [n_cand, one], "last_candidate")
    # the candidates by the float32 row (half the key bytes of `scaled` for a device radix select): `scaled` is a
    # non-decreasing function of the row, so these are C best of `scaled` too, and their scaled values are exact
    cand_row, cand_ids = g.ops("TopK", [row, n_cand_1], "candidates", 2, axis=0, largest=1, sorted=1)
    cand_vals = g.op("Div", [g.op("Sub", [g.op("Cast", [cand_row], "candidates_f64", to=F64), best_f64],
                                  "candidates_shifted"), temperature], "candidate_values")

    # top-k: keep values >= the k-th best (ties kept), when 0 < k < V
    k = g.op("Cast", [param("top_k")], "k", to=I64)
    k_on = g.op("And", [g.op("Greater", [k, zero], "k_positive"), g.op("Less", [k, vocab], "k_below_vocab")], "k_on")
    k_off = g.op("Not", [k_on], "k_off")
    k_at = g.op("Sub", [g.op("Max", [g.op("Min", [k, n_cand], "k_capped"), one], "k_clipped"), one], "k_index")
    kth = g.op("Gather", [cand_vals, k_at], "kth_value", axis=0)
    in_k = g.op("Or", [k_off, g.op("GreaterOrEqual", [cand_vals, kth], "at_least_kth")], "in_top_k")
    border = g.op("Gather", [cand_vals, last_cand], "border_value", axis=0)
    all_candidates = g.op("Equal", [n_cand, vocab], "all_candidates")
    k_inside = g.op("And", [g.op("LessOrEqual", [k, n_cand], "k_fits"),
                            g.op("Or", [all_candidates, g.op("Less", [border, kth], "ties_end_inside")],
                                 "k_ties_inside")], "k_inside")
    k_exact = g.op("And", [k_on, k_inside], "k_exact")

    # top-p over the mass of what top-k kept (the whole row without top-k)
    cand_w = g.op("Exp", [cand_vals], "candidate_weight")  # [C]
    w_k = g.op("Where", [in_k, cand_w, zero_f64], "weight_top_k")
    total = g.op("Where", [k_on, g.op("ReduceSum", [w_k, axis0], "mass_top_k", keepdims=0),
                           g.op("ReduceSum", [weight_all, axis0], "mass_row", keepdims=0)], "mass")
    p = param("top_p")
    p_on = g.op("Less", [p, o.f64("one_f64", 1.0)], "p_on")
    p_off = g.op("Not", [p_on], "p_off")
    probs = g.op("Div", [w_k, total], "probs")
    cum = g.op("CumSum", [probs, zero], "cumulative")
    mass_before = g.op("Sub", [cum, probs], "mass_before")
    drop = g.op("GreaterOrEqual", [mass_before, p], "drop")
    # the nucleus is the first n_keep positions in value order; which tokens tie at its last value is left to
    # ids (Sampler's rule), not to TopK's order among equal values: every token above the cut value, then the
    # m = n_keep - n_above smallest ids among those equal to it
    position = g.op("Range", [zero, n_cand, one], "position")
    first = g.op("Equal", [position, zero], "first")
    n_keep = o.count_true(g.op("Or", [g.op("Not", [drop], "not_dropped"), first], "in_nucleus_prefix"), "n_keep")
    cut = g.op("Gather", [cand_vals, g.op("Sub", [n_keep, one], "cut_index")], "cut_value", axis=0)
    above = g.op("Greater", [cand_vals, cut], "above_cut")
    tie = g.op("Equal", [cand_vals, cut], "at_cut")
    neg_id = g.op("Neg", [g.op("Cast", [cand_ids], "candidate_id_f32", to=F32)], "neg_id")  # ids < 2**24: exact
    ninf_key = g.const("ninf_key", np.array(-np.inf, np.float32))
    tie_keys, _ = g.ops("TopK", [g.op("Where", [tie, neg_id, ninf_key], "tie_keys_raw"), n_cand_1], "tie_order", 2,
                        axis=0, largest=1, sorted=1)  # -id of the tied tokens, smallest id first
    m_index = g.op("Sub", [g.op("Sub", [n_keep, o.count_true(above, "n_above")], "n_tied_kept"), one], "tie_index")
    last_tied = g.op("Gather", [tie_keys, m_index], "last_tied_key", axis=0)
    kept_tie = g.op("And", [tie, g.op("GreaterOrEqual", [neg_id, last_tied], "tie_id_small")], "tie_kept")
    in_p = g.op("Or", [p_off, g.op("Or", [above, kept_tie], "in_nucleus")], "in_top_p")
    kept = g.op("And", [in_k, in_p], "kept")
    # the kept set lies inside the candidates: all of the row is, or top-k's set and its ties end inside, or (no
    # top-k) the nucleus closes inside and its cut value's tie group ends inside too
    p_closes = g.op("And", [p_on, g.op("Gather", [drop, last_cand], "nucleus_closes", axis=0)], "p_closes")
    cut_inside = g.op("Or", [all_candidates, g.op("Less", [border, cut], "cut_ties_inside")], "cut_inside")
    p_inside = g.op("And", [k_off, g.op("And", [p_closes, cut_inside], "nucleus_inside")], "p_inside")
    cand_inside = g.op("Or", [all_candidates, g.op("Or", [k_exact, p_inside], "filter_inside")], "candidates_inside")
    cand_cut_clear = g.op("Or", [p_off, o.cut_clear(mass_before, n_keep, n_cand, p, v, "cand_cut")],
                          "cand_cut_sure")

    # the draw over the kept candidates, ids ascending: TopK of -id puts them first, the rest (-inf) after
    keys = g.op("Where", [kept, neg_id, ninf_key], "order_keys")
    _, order = g.ops("TopK", [keys, n_cand_1], "id_order", 2, axis=0, largest=1, sorted=1)
    w_sorted = g.op("Gather", [g.op("Where", [kept, cand_w, zero_f64], "weight_kept"), order], "weight_sorted",
                    axis=0)
    cdf = g.op("CumSum", [w_sorted, zero], "cdf")
    cdf_n = g.op("Div", [cdf, g.op("Gather", [cdf, last_cand], "cdf_last", axis=0)], "cdf_normalised")
    u = param("uniform")
    at = g.op("Min", [o.count_at_most(cdf_n, u, "cand_draw"), last_cand], "cand_draw_index")
    cand_token = g.op("Gather", [cand_ids, g.op("Gather", [order, at], "cand_draw_position", axis=0)],
                      "cand_token", axis=0)
    cdf_low = g.op("Where", [g.op("Equal", [at, zero], "cand_draw_first"), zero_f64,
                             g.op("Gather", [cdf_n, g.op("Max", [g.op("Sub", [at, one], "cand_prev_raw"), zero],
                                                         "cand_prev")], "cand_cdf_before", axis=0)], "cand_cdf_low")
    cand_draw_clear = g.op("And", [o.clears(g.op("Gather", [cdf_n, at], "cand_cdf_at", axis=0), u, v.margin,
                                            "cand_above_u"), o.clears(u, cdf_low, v.margin, "cand_below_u")],
                           "cand_draw_sure")
    cand_exact = g.op("And", [cand_cut_clear, cand_draw_clear], "candidates_sure")

    # no filter: the whole row in blocks
    row_token, row_exact = o.draw_row(weight_all, u, v, "row_draw")

    # a filtered set that may reach past the candidates: the whole row, sorted (only such rows run this branch)
    f = NodeBuilder("/sampler/whole_row")
    fo = _Ops(f)
    # sorted as float32, scaled after, as the candidates are
    ranked_row, _ = f.ops("TopK", [row, vocab_1], "sorted", 2, axis=0, largest=1, sorted=1)  # [V] descending
    ranked = f.op("Div", [f.op("Sub", [f.op("Cast", [ranked_row], "sorted_f64", to=F64), best_f64], "sorted_shifted"),
                          temperature], "ranked")
    f_kth = f.op("Gather", [ranked, f.op("Sub", [f.op("Max", [f.op("Min", [k, vocab], "k_capped"), one],
                                                      "k_clipped"), one], "k_index")], "kth_value", axis=0)
    f_in_k = f.op("Or", [k_off, f.op("GreaterOrEqual", [scaled, f_kth], "at_least_kth")], "in_top_k")  # id order
    f_in_k_ranked = f.op("Or", [k_off, f.op("GreaterOrEqual", [ranked, f_kth], "ranked_at_least_kth")],
                         "ranked_in_top_k")
    f_total = f.op("ReduceSum", [f.op("Where", [f_in_k, weight_all, zero_f64], "weight_top_k"), axis0], "mass",
                   keepdims=0)
    f_probs = f.op("Div", [f.op("Where", [f_in_k_ranked, f.op("Exp", [ranked], "ranked_weight"), zero_f64],
                                "ranked_weight_top_k"), f_total], "probs")  # [V], value order
    f_before = f.op("Sub", [fo.blocked_cumsum(f_probs, v, "mass_cum"), f_probs], "mass_before")
    f_first = f.op("Equal", [f.op("Range", [zero, vocab, one], "position"), zero], "first")
    f_n_keep = fo.count_true(f.op("Or", [f.op("Less", [f_before, p], "not_dropped"), f_first], "in_nucleus_prefix"),
                             "n_keep")
    f_cut = f.op("Gather", [ranked, f.op("Sub", [f_n_keep, one], "cut_index")], "cut_value", axis=0)
    f_above = f.op("And", [f_in_k, f.op("Greater", [scaled, f_cut], "above_cut_value")], "above_cut")
    f_tie = f.op("And", [f_in_k, f.op("Equal", [scaled, f_cut], "at_cut_value")], "at_cut")
    # the tied tokens' ranks by id (a blocked cumulative count: exact integers in float64); the m smallest kept
    f_rank = fo.blocked_cumsum(f.op("Cast", [f_tie], "at_cut_f64", to=F64), v, "tie_rank")
    f_m = f.op("Cast", [f.op("Sub", [f_n_keep, fo.count_true(f_above, "n_above")], "n_tied_kept")], "n_tied_kept_f64",
               to=F64)
    f_kept_tie = f.op("And", [f_tie, f.op("LessOrEqual", [f_rank, f_m], "tie_rank_small")], "tie_kept")
    f_kept = f.op("And", [f_in_k, f.op("Or", [p_off, f.op("Or", [f_above, f_kept_tie], "in_nucleus")], "in_top_p")],
                  "kept")
    f_token, f_draw_clear = fo.draw_row(f.op("Where", [f_kept, weight_all, zero_f64], "weight_kept"), u, v, "draw")
    f_cut_clear = f.op("Or", [p_off, fo.cut_clear(f_before, f_n_keep, vocab, p, v, "cut")], "cut_sure")
    f.op("Identity", [f_token], "token_out", outputs=["/sampler/whole_row/token"])
    f.op("And", [f_cut_clear, f_draw_clear], "exact_out", outputs=["/sampler/whole_row/exact"])
    c = NodeBuilder("/sampler/candidates")
    c.op("Identity", [cand_token], "token_out", outputs=["/sampler/candidates/token"])
    c.op("Identity", [cand_exact], "exact_out", outputs=["/sampler/candidates/exact"])

    greedy = g.op("Greater", [param("greedy"), o.f64("half", 0.5)], "greedy")
    whole_row = g.op("Not", [g.op("Or", [k_on, p_on], "filtered")], "whole_row")
    need_rows = g.op("And", [g.op("And", [healthy, g.op("Not", [greedy], "sampled_token")], "drawn"),
                             g.op("Not", [g.op("Or", [whole_row, cand_inside], "candidates_enough")],
                                  "past_candidates")], "need_whole_row")
    f_token_out, f_exact_out = g.ops(
        "If", [need_rows], "filter_where", 2,
        then_branch=f.subgraph("whole_row", [("/sampler/whole_row/token", I64), ("/sampler/whole_row/exact", BOOL)]),
        else_branch=c.subgraph("candidates", [("/sampler/candidates/token", I64),
                                              ("/sampler/candidates/exact", BOOL)]))
    sampled = g.op("Where", [whole_row, row_token, f_token_out], "sampled")
    token = g.op("Where", [greedy, greedy_token, sampled], "token_scalar")
    g.op("Unsqueeze", [token, axis0], "token", outputs=["token"])
    rule_exact = g.op("Or", [g.op("And", [whole_row, row_exact], "row_way_exact"),
                             g.op("And", [g.op("Not", [whole_row], "filtered_way"), f_exact_out],
                                  "filtered_way_exact")], "rule_exact")  # (no Where for bool on the CPU EP)
    exact = g.op("And", [healthy, g.op("Or", [greedy, rule_exact], "way_exact")], "exact_scalar")
    g.op("Unsqueeze", [exact, axis0], "exact", outputs=["exact"])

    return g.model(SAMPLER, f"hulurt sampling graph: greedy, temperature, top-k, top-p and repetition penalty, over "
                   f"{candidates} candidates or the whole row (hulurt.sampling's rule); params "
                   f"{', '.join(SAMPLER_PARAMS)}")
