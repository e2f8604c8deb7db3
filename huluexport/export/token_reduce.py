"""The token-reduction mask as ONNX: standard ops any runtime can run, or the hulu::TokenReduce custom op served by
the CUDA plugin (kernels/). Emitted standalone (the contract's `token_reduce` piece) or folded into another graph.
Rule and arithmetic: hulurt.reduction (the oracle); op name/domain/version/attrs: hulurt.contract.TOKEN_REDUCE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from hulurt.contract import TOKEN_REDUCE, Dims, pieces
from hulurt.reduction import MODES, threshold_value
from onnx import TensorProto, helper

from huluexport.errors import ExportError
from huluexport.export.nodes import NodeBuilder

log = logging.getLogger(__name__)

FORMS = ("standard", "custom")
MIN_OPSET = 15  # Shape(start, end) and ReduceSum/Squeeze with axes as inputs
DEFAULT_OPSET = 18
KEPT_INDICES = "kept_indices"  # optional second output: flat indices of kept rows, [n_kept] int64


@dataclass(frozen=True)
class TokenReduceSpec:
    """What the graph computes: the OpSpec's attributes (threshold, min_tokens, bf16) and the accumulation.

    accumulate: "exact" sums |diff| in float64 (Cast DOUBLE -> ReduceSum -> Cast FLOAT), bit-equal to the oracle
    for any pixels on onnxruntime; "float32" sums in float32, exact for 8-bit-derived pixels in bf16 mode (see
    hulurt.reduction) and the form TensorRT runs (it has no float64 tensors).
    """

    threshold: float = 0.1
    min_tokens: int = 1
    mode: str = "bf16"
    accumulate: str = "exact"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ExportError(f"token reduction mode {self.mode!r}; expected one of {MODES}")
        if self.accumulate not in ("exact", "float32"):
            raise ExportError(
                f"token reduction accumulate={self.accumulate!r}; expected 'exact' or 'float32'"
            )
        if not np.isfinite(self.threshold):
            raise ExportError(f"token reduction threshold {self.threshold!r}; expected a finite number")
        if int(self.min_tokens) != self.min_tokens or self.min_tokens < 0:
            raise ExportError(f"token reduction min_tokens {self.min_tokens!r}; expected an integer >= 0")

    @property
    def op_attrs(self) -> dict[str, float | int]:
        """The custom op's attributes, keyed and typed as TOKEN_REDUCE.attrs declares them."""
        values = {
            "threshold": float(self.threshold),
            "min_tokens": int(self.min_tokens),
            "bf16": int(self.mode == "bf16"),
        }
        if set(values) != set(TOKEN_REDUCE.attrs):
            raise ExportError(
                f"TokenReduce attrs {sorted(values)} differ from the contract's {sorted(TOKEN_REDUCE.attrs)}"
            )
        return values


def token_reduce_nodes(
    spec: TokenReduceSpec,
    *,
    form: str = "standard",
    pixels: str = "pixel_patches",
    keep_mask: str = "keep_mask",
    kept_indices: str | None = None,
    prefix: str = "/token_reduce",
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (+ initializers) computing keep_mask [T, G] bool from pixels [T, G, M, 588] float32.

    standard form (names abbreviated; b() = Cast to bfloat16 and back, only in bf16 mode):

        pixel_patches [T,G,M,P] -> b() -> x
        x[1:] - x[:-1] -> b() -> Abs -> ReduceSum(axes 2,3) -> / (M*P) -> b(), *255, b(), /255, b() -> d [T-1,G]
        d > thr -> rest [T-1,G]          Concat(ones [1,G], rest) -> keep0 [T,G]
        count = ReduceSum(keep0, axis 1) [T,1];  short = count < Min(min_tokens, G)
        first = Range(0, G) < min_tokens [G]  ->  keep_mask = keep0 Or (short And first)
        (optional) kept_indices = Squeeze(NonZero(Reshape(keep_mask, [-1])))   [n_kept] int64

    custom form: one node hulu::TokenReduce(pixel_patches) -> keep_mask, kept_indices, n_kept (attrs from the
    contract); TensorRT runs it with kernels/build/libhulu_plugins.so loaded.
    """
    if form not in FORMS:
        raise ExportError(f"token reduction form {form!r}; expected one of {FORMS}")
    g = NodeBuilder(prefix)
    if form == "custom":
        # the plugin's three outputs (token_reduce_plugin.h): mask, kept indices, and their count (size tensor)
        outs = [keep_mask, kept_indices or f"{g.prefix}/{KEPT_INDICES}", f"{g.prefix}/n_kept"]
        g.nodes.append(
            helper.make_node(
                TOKEN_REDUCE.name,
                [pixels],
                outs,
                name=f"{g.prefix}/{TOKEN_REDUCE.name}",
                domain=TOKEN_REDUCE.domain,
                **spec.op_attrs,
            )
        )
        return g.nodes, g.inits

    bf16 = spec.mode == "bf16"
    zero, one, minus1 = (
        g.const(n, np.array([v], dtype=np.int64)) for n, v in (("zero", 0), ("one", 1), ("minus1", -1))
    )
    big = g.const("int64_max", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    x = g.round_bf16(pixels, "pixels_bf16") if bf16 else pixels
    # frames t >= 1 and t - 1, as two slices along axis 0: [T, G, M, P] -> [T-1, G, M, P] each
    cur = g.op("Slice", [x, one, big, zero], "cur_frames")
    prev = g.op("Slice", [x, zero, minus1, zero], "prev_frames")
    diff = g.op("Sub", [cur, prev], "diff")
    if bf16:
        diff = g.round_bf16(diff, "diff_bf16")
    absd = g.op("Abs", [diff], "abs")
    axes23 = g.const("axes_2_3", np.array([2, 3], dtype=np.int64))
    if spec.accumulate == "exact":
        wide = g.op("Cast", [absd], "abs_f64", to=TensorProto.DOUBLE)
        total64 = g.op("ReduceSum", [wide, axes23], "sum_f64", keepdims=0)
        total = g.op("Cast", [total64], "sum_f32", to=TensorProto.FLOAT)  # the oracle's one rounding
    else:
        total = g.op("ReduceSum", [absd, axes23], "sum", keepdims=0)  # [T-1, G]
    shape = g.op("Shape", [pixels], "shape")
    mp = g.op("Shape", [pixels], "shape_m_p", start=2, end=4)
    d_len = g.op("ReduceProd", [mp], "token_dim", keepdims=1)
    d_f = g.op("Cast", [d_len], "token_dim_f32", to=TensorProto.FLOAT)
    mean = g.op("Div", [total, d_f], "mean")
    if bf16:  # upstream's x255 ... /255 round trip in bf16
        mean = g.round_bf16(mean, "mean_bf16")
        mean = g.round_bf16(
            g.op("Mul", [mean, g.const("c255", np.array(255.0, np.float32))], "x255"), "x255_bf16"
        )
        mean = g.round_bf16(
            g.op("Div", [mean, g.const("c255_div", np.array(255.0, np.float32))], "div255"), "div255_bf16"
        )
    thr = threshold_value(spec.threshold, spec.mode)
    rest = g.op("Greater", [mean, g.const("threshold", np.array(thr, np.float32))], "greater")  # [T-1, G]
    n_groups = g.op("Gather", [shape, one], "n_groups", axis=0)  # [1]
    ones_shape = g.op("Concat", [one, n_groups], "first_frame_shape", axis=0)
    first = g.op(
        "ConstantOfShape",
        [ones_shape],
        "first_frame",
        value=helper.make_tensor("true", TensorProto.BOOL, [1], [True]),
    )
    keep0 = g.op("Concat", [first, rest], "keep_rule", axis=0)  # [T, G]
    counts = g.op(
        "ReduceSum", [g.op("Cast", [keep0], "keep_i64", to=TensorProto.INT64), one], "counts", keepdims=1
    )  # [T, 1]
    k_min = g.const("min_tokens", np.array([spec.min_tokens], dtype=np.int64))
    k = g.op("Min", [k_min, n_groups], "k")
    short = g.op("Less", [counts, k], "short")  # [T, 1]
    g_scalar = g.op("Squeeze", [n_groups, zero], "n_groups_scalar")  # [1] -> []
    pos = g.op(
        "Range",
        [
            g.const("range_start", np.array(0, np.int64)),
            g_scalar,
            g.const("range_step", np.array(1, np.int64)),
        ],
        "positions",
    )  # [G]
    firstk = g.op("Less", [pos, k_min], "first_k")  # [G]
    forced = g.op("And", [short, firstk], "forced")  # [T, G]
    g.op("Or", [keep0, forced], "keep_mask", outputs=[keep_mask])
    if kept_indices:
        flat = g.op("Reshape", [keep_mask, minus1], "keep_flat")
        nz = g.op("NonZero", [flat], "nonzero")  # [1, n_kept]
        g.op("Squeeze", [nz, zero], "kept_indices", outputs=[kept_indices])
    return g.nodes, g.inits


def token_reduce_model(
    spec: TokenReduceSpec, *, form: str = "standard", with_indices: bool = False, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """The contract's standalone `token_reduce` piece: pixel_patches -> keep_mask (+ kept_indices)."""
    if opset < MIN_OPSET:
        raise ExportError(f"token reduction graph needs opset >= {MIN_OPSET}; got {opset}")
    piece = pieces(Dims(hidden=1, vocab=1, layers=1, kv_heads=1, head_dim=1, vision_head_dim=1))[
        "token_reduce"
    ]
    px = piece.input("pixel_patches")
    km = piece.output("keep_mask")
    nodes, inits = token_reduce_nodes(
        spec,
        form=form,
        pixels=px.name,
        keep_mask=km.name,
        kept_indices=KEPT_INDICES if with_indices else None,
    )
    outputs = [helper.make_tensor_value_info(km.name, TensorProto.BOOL, list(km.shape))]
    if with_indices:
        outputs.append(helper.make_tensor_value_info(KEPT_INDICES, TensorProto.INT64, ["n_kept"]))
    graph = helper.make_graph(
        nodes,
        "token_reduce",
        [helper.make_tensor_value_info(px.name, TensorProto.FLOAT, list(px.shape))],
        outputs,
        initializer=inits,
    )
    imports = [helper.make_opsetid("", opset)]
    if form == "custom":
        imports.append(helper.make_opsetid(TOKEN_REDUCE.domain, TOKEN_REDUCE.version))
    model = helper.make_model(graph, opset_imports=imports, producer_name="huluexport")
    model.doc_string = f"token reduction ({form} form): {TOKEN_REDUCE.doc}"
    log.info("token_reduce: %s form, mode %s, %d nodes", form, spec.mode, len(nodes))
    return model


def insert_token_reduce(
    model: onnx.ModelProto,
    spec: TokenReduceSpec,
    *,
    form: str = "standard",
    pixels: str = "pixel_patches",
    keep_mask: str = "keep_mask",
    with_indices: bool = False,
) -> onnx.ModelProto:
    """Fold the reduction into `model` (e.g. vision.onnx): reads its input `pixels`, adds output `keep_mask`.

    before: pixel_patches -> [vision] -> visual_embeds
    after:  pixel_patches -> [vision] -> visual_embeds
                         \\-> [token_reduce] -> keep_mask (+ kept_indices)
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {i.name for i in out.graph.input}
    if pixels not in names:
        raise ExportError(
            f"graph {out.graph.name!r} has no input {pixels!r} to reduce; inputs: {sorted(names)}"
        )
    taken = {o.name for o in out.graph.output} | {v for n in out.graph.node for v in n.output}
    if keep_mask in taken:
        raise ExportError(f"graph {out.graph.name!r} already produces {keep_mask!r}")
    opset = max((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if form == "standard" and opset < MIN_OPSET:
        raise ExportError(
            f"graph {out.graph.name!r} is opset {opset}; the token reduction needs >= {MIN_OPSET}"
        )
    nodes, inits = token_reduce_nodes(
        spec,
        form=form,
        pixels=pixels,
        keep_mask=keep_mask,
        kept_indices=KEPT_INDICES if with_indices else None,
    )
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    t_dim = next(i for i in out.graph.input if i.name == pixels).type.tensor_type.shape.dim
    dims = [d.dim_param or d.dim_value for d in t_dim][:2] or ["n_frames", "n_groups"]
    out.graph.output.append(helper.make_tensor_value_info(keep_mask, TensorProto.BOOL, dims))
    if with_indices:
        out.graph.output.append(helper.make_tensor_value_info(KEPT_INDICES, TensorProto.INT64, ["n_kept"]))
    if form == "custom" and not any(o.domain == TOKEN_REDUCE.domain for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(TOKEN_REDUCE.domain, TOKEN_REDUCE.version))
    return out
