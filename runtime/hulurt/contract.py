"""THE single declaration of the exported pieces' I/O and of the custom op (stdlib only, Python 3.10).

The exporter (dynamic axes), the TensorRT builder (profiles), the manifest, the runtime's input checks,
the tests and the kernel build (`python -m hulurt.contract --cdefs token_reduce`) all derive from here.
Helpers: `dim_ranges(...)` (DimRange min/opt/max per named dim; targets pick the limits), `bind(piece, feeds,
ranges)` / `assert_conforms(piece, outputs, sizes)` (names, dtypes, ranks, static dims, one size per named dim,
DERIVED_DIMS relations, ranges; ContractError otherwise), `random_feeds(piece, sizes)` (numpy, imported lazily).

Pieces (one visual input per vision call; all its frames share one grid):

    vision   pixel_patches [n_frames, n_groups, merge_group, patch_dim]  float32
             rope_cos      [n_patches, vision_head_dim]                  float32  (host table, n_patches =
             rope_sin      [n_patches, vision_head_dim]                  float32   n_groups * merge_group)
          -> visual_embeds [n_frames, n_groups, hidden]                  act dtype
             (merge_group = m*m: 1 for images (merge is identity), 4 for video/3-D (2x2 mean))
    embed    input_ids [1, seq_len] int64, visual_embeds [n_visual, hidden]
          -> inputs_embeds [1, seq_len, hidden]  (rows at image ids replaced in order by visual rows)
    decoder  inputs_embeds [1, seq_len, hidden], position_ids [1, seq_len] int64,
             past_key_values.{i}.key/value [1, kv_heads, past_len, head_dim]
          -> logits [1, vocab] float32 (last position only), present.{i}.key/value [1, kv_heads, total_len, head_dim]
    decoder_gqa  (the GPU decoder form "gqa-static", DECODER_FORMS; optional, `huluexport build --decoder-form`)
             inputs_embeds [1, seq_len, hidden], position_ids [1, seq_len] int64, seqlens_k [1] int32 (= T - 1,
             T = tokens in the cache after this call), total_sequence_length [] int32 (an upper bound of T),
             past_key_values.{i}.key/value [1, kv_heads, kv_capacity, head_dim] (buffers of fixed capacity)
          -> logits [1, vocab] float32, next_token [1] int64 (argmax of logits),
             present.{i}.key/value [1, kv_heads, kv_capacity, head_dim] (the past buffers with rows [T-seq_len, T)
             written; bind the same memory as past and present to write in place: com.microsoft::
             GroupQueryAttention's shared buffer, see docs/gpu.md)
    token_reduce (optional graph; standard ONNX ops or the custom op below)
             pixel_patches [n_frames, n_groups, merge_group, patch_dim] float32 -> keep_mask [n_frames, n_groups] bool
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Union

CONTRACT_VERSION = 1

Dim = Union[int, str]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64", "bool"
    shape: tuple[Dim, ...]  # int = static; str = named dynamic dim, the same string everywhere


@dataclass(frozen=True)
class PieceSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)


@dataclass(frozen=True)
class OpSpec:
    """A custom op: ONNX domain/name/version, its attributes, and (for TensorRT) the plugin strings."""

    name: str
    domain: str
    version: int
    attrs: dict[str, str] = field(default_factory=dict)  # attribute name -> "float" | "int"
    doc: str = ""

    @property
    def plugin_namespace(self) -> str:
        return self.domain


TOKEN_REDUCE = OpSpec(
    name="TokenReduce",
    domain="hulu",
    version=1,
    attrs={"threshold": "float", "min_tokens": "int", "bf16": "int"},
    doc=(
        "A merged token is kept if the mean absolute difference of its m*m*588 normalised pixel values "
        "from the same token of the previous frame exceeds `threshold`; every token of the first frame is "
        "kept; a frame with fewer than `min_tokens` kept tokens gets its first `min_tokens` tokens kept. "
        "With bf16=1 the pixels, the difference, the mean and the upstream x255/255 steps are rounded to "
        "bfloat16 as upstream does. Source: ZJUI-AI4H/Hulu-Med src/hulumed/model/hulumed_arch.py "
        "_get_compression_mask / _compress_visual_tokens (docs/model.md §6.2)."
    ),
)

OPS: dict[str, OpSpec] = {"token_reduce": TOKEN_REDUCE}

# Decoder forms a bundle may carry (manifest `pieces`), by name -> piece. "v1-concat": the graph concatenates
# past and new rows and returns a longer present (any backend, TensorRT included). "gqa-static": KV buffers of
# fixed capacity written in place by com.microsoft::GroupQueryAttention (onnxruntime CPU and CUDA; the form a
# CUDA graph can replay). The runtime picks by provider: hulurt.backends.select_decoder.
DECODER_FORMS: dict[str, str] = {"v1-concat": "decoder", "gqa-static": "decoder_gqa"}

# The runtime's sampling graph (hulurt/graphs/sampler.onnx; not a bundle piece: one file fits every model, the
# vocabulary is a dynamic dim). It runs next to decoder_gqa on the decoder's device, reading the logits buffer
# in place, so only the chosen token comes back to the host. Written by huluexport/export/sampler.py; the rule
# is hulurt.sampling's and its tests hold the two to the same tokens for the same uniform draw.
#     logits [1, vocab] float32, seen_ids [n_seen] int64 (distinct ids for the repetition penalty; [0] with a
#     penalty of 1 when off), params [6] float64 (SAMPLER_PARAMS, in that order)
#  -> token [1] int64, exact [1] bool (false: the logits are not finite, or a decision of the rule lies too close to
#     a boundary for float64 arithmetic in another order to be sure of it (SAMPLER_MARGIN); the caller then
#     samples the row on the host with the same uniform draw)
# Top-k / top-p look at the SAMPLER_CANDIDATES best logits first; a set that may reach past them (top_k >= the
# candidates, ties of the k-th value up to the border, a nucleus wider than the candidates) takes the whole-row
# branch of the graph (a full sort, inside an If), so every healthy row is sampled on the device.
SAMPLER_PARAMS = ("temperature", "top_k", "top_p", "repetition_penalty", "greedy", "uniform")
SAMPLER_CANDIDATES = 1024  # top-k / top-p work on the best this many logits (TopK) when the kept set fits there
SAMPLER_BLOCK = 1024  # cumulative sums over the whole row run in blocks of this many ids (block sums, then one)
# How far (in probability, the row's mass being 1) a top-p cut's mass or a draw's cumulative weight must lie from
# the threshold it is compared with (p, the uniform number) for `exact`. The graph and the host sum the same
# float64 terms in different orders (blocks, reductions) and their exp may differ by an ulp: over a row of
# 152,064 terms that moves a sum by less than 152,064 * 2**-52 ~ 3.4e-11, so 1e-9 leaves a factor of 30, and a
# uniform draw lands that close to one of its token's two boundaries with a probability of 2e-9 (the host then
# decides that token).
SAMPLER_MARGIN = 1e-9
SAMPLER = PieceSpec(
    "sampler",
    inputs=(
        TensorSpec("logits", "float32", (1, "vocab")),
        TensorSpec("seen_ids", "int64", ("n_seen",)),
        TensorSpec("params", "float64", (len(SAMPLER_PARAMS),)),
    ),
    outputs=(TensorSpec("token", "int64", (1,)), TensorSpec("exact", "bool", (1,))),
)

# The runtime's row-gather graphs (hulurt/graphs/gather_rows_<act dtype>.onnx; not bundle pieces): the kept rows of
# one vision call, taken where the vision output lies and written by IO binding straight into the request's
# visual-row buffer on the decoder's device, so the visual rows never travel through the host (hulurt.device_rows).
#     rows [n_frames, n_groups, hidden] act dtype, indices [n_kept] int64 (flat frame-major positions of the
#     kept merged tokens)  ->  kept [n_kept, hidden] act dtype
GATHER_ROWS_DTYPES = ("float32", "float16")


def gather_rows_spec(act_dtype: str) -> PieceSpec:
    return PieceSpec(
        f"gather_rows_{act_dtype}",
        inputs=(TensorSpec("rows", act_dtype, ("n_frames", "n_groups", "hidden")),
                TensorSpec("indices", "int64", ("n_kept",))),
        outputs=(TensorSpec("kept", act_dtype, ("n_kept", "hidden")),),
    )


@dataclass(frozen=True)
class Dims:
    """Static numbers of one model + the act dtype of one bundle."""

    hidden: int
    vocab: int
    layers: int
    kv_heads: int
    head_dim: int
    vision_head_dim: int
    patch_dim: int = 588
    act_dtype: str = "float32"  # "float32" | "float16"


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def pieces(d: Dims) -> dict[str, PieceSpec]:
    a = d.act_dtype
    patches = TensorSpec("pixel_patches", "float32", ("n_frames", "n_groups", "merge_group", d.patch_dim))
    vision = PieceSpec(
        "vision",
        inputs=(
            patches,
            TensorSpec("rope_cos", "float32", ("n_patches", d.vision_head_dim)),
            TensorSpec("rope_sin", "float32", ("n_patches", d.vision_head_dim)),
        ),
        outputs=(TensorSpec("visual_embeds", a, ("n_frames", "n_groups", d.hidden)),),
    )
    embed = PieceSpec(
        "embed",
        inputs=(
            TensorSpec("input_ids", "int64", (1, "seq_len")),
            TensorSpec("visual_embeds", a, ("n_visual", d.hidden)),
        ),
        outputs=(TensorSpec("inputs_embeds", a, (1, "seq_len", d.hidden)),),
    )
    past, present = kv_names(d.layers)
    kv_in = tuple(TensorSpec(n, a, (1, d.kv_heads, "past_len", d.head_dim)) for n in past)
    kv_out = tuple(TensorSpec(n, a, (1, d.kv_heads, "total_len", d.head_dim)) for n in present)
    decoder = PieceSpec(
        "decoder",
        inputs=(
            TensorSpec("inputs_embeds", a, (1, "seq_len", d.hidden)),
            TensorSpec("position_ids", "int64", (1, "seq_len")),
            *kv_in,
        ),
        outputs=(TensorSpec("logits", "float32", (1, d.vocab)), *kv_out),
    )
    buf = tuple(TensorSpec(n, a, (1, d.kv_heads, "kv_capacity", d.head_dim)) for n in past)
    decoder_gqa = PieceSpec(
        "decoder_gqa",
        inputs=(
            TensorSpec("inputs_embeds", a, (1, "seq_len", d.hidden)),
            TensorSpec("position_ids", "int64", (1, "seq_len")),
            TensorSpec("seqlens_k", "int32", (1,)),
            TensorSpec("total_sequence_length", "int32", ()),
            *buf,
        ),
        outputs=(
            TensorSpec("logits", "float32", (1, d.vocab)),
            TensorSpec("next_token", "int64", (1,)),
            *(TensorSpec(n, a, (1, d.kv_heads, "kv_capacity", d.head_dim)) for n in present),
        ),
    )
    token_reduce = PieceSpec(
        "token_reduce",
        inputs=(patches,),
        outputs=(TensorSpec("keep_mask", "bool", ("n_frames", "n_groups")),),
    )
    return {p.name: p for p in (vision, embed, decoder, decoder_gqa, token_reduce)}


# --------------------------------------------------------------------------------------------------
# Dim ranges and checks derived from the specs (export axes, TensorRT profiles, runtime input checks)
# --------------------------------------------------------------------------------------------------

DYNAMIC_DIMS = (
    "n_frames", "n_groups", "merge_group", "n_patches", "seq_len", "n_visual", "past_len", "total_len",
    "kv_capacity",
)
# Relations between named dims that every feed must satisfy (name -> (kind, operand names)).
DERIVED_DIMS: dict[str, tuple[str, tuple[str, str]]] = {
    "n_patches": ("mul", ("n_groups", "merge_group")),
    "total_len": ("add", ("past_len", "seq_len")),
}


@dataclass(frozen=True)
class DimRange:
    """Inclusive range of one named dim, with the size TensorRT tunes for (`opt`)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (0 <= self.min <= self.opt <= self.max):
            raise _error(f"dim range needs 0 <= min <= opt <= max; got {self}")


def _error(message: str) -> Exception:  # hulurt.errors imported lazily: no import cycle at load time
    from hulurt.errors import ContractError

    return ContractError(message)


def dim_ranges(
    *, max_context: int, max_frames: int, max_groups: int, opt_context: int = 512, opt_groups: int = 256
) -> dict[str, DimRange]:
    """Ranges of every dynamic dim for one build target (see huluexport/devices.py).

    `max_groups` bounds merged tokens per frame; `n_patches` follows from merge_group <= 4.
    """
    def rng(lo: int, opt: int, hi: int) -> DimRange:
        return DimRange(lo, max(lo, min(opt, hi)), hi)

    return {
        "n_frames": rng(1, 1, max_frames),
        "n_groups": rng(1, opt_groups, max_groups),
        "merge_group": rng(1, 1, 4),
        "n_patches": rng(1, opt_groups, 4 * max_groups),
        "seq_len": rng(1, opt_context, max_context),
        "n_visual": rng(0, opt_groups, max_context),
        "past_len": rng(0, opt_context, max_context - 1),
        "total_len": rng(1, opt_context, max_context),
        "kv_capacity": rng(1, max_context, max_context),
    }


def shape_of(spec: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape of `spec` with named dims looked up in `sizes` (derived dims computed if absent)."""
    out = []
    for dim in spec.shape:
        if isinstance(dim, int):
            out.append(dim)
            continue
        if dim not in sizes and dim in DERIVED_DIMS:
            kind, (a, b) = DERIVED_DIMS[dim]
            out.append(sizes[a] * sizes[b] if kind == "mul" else sizes[a] + sizes[b])
            continue
        if dim not in sizes:
            raise _error(f"tensor {spec.name!r} needs a size for dim {dim!r}; got {sorted(sizes)}")
        out.append(sizes[dim])
    return tuple(out)


def random_feeds(piece: PieceSpec, sizes: dict[str, int], seed: int = 0) -> dict[str, Any]:
    """Random feeds for `piece` at the given dim sizes (numpy arrays; float ~ N(0, 1), int64 ids in [0, 100))."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for spec in piece.inputs:
        shape = shape_of(spec, sizes)
        if spec.dtype == "int64":
            feeds[spec.name] = rng.integers(0, 100, size=shape, dtype=np.int64)
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) > 0.5
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def _check(
    piece: PieceSpec,
    specs: tuple[TensorSpec, ...],
    arrays: dict[str, Any],
    role: str,
    ranges: dict[str, DimRange] | None,
    sizes: dict[str, int],
    where: str,
) -> dict[str, int]:
    expected = [s.name for s in specs]
    unknown = sorted(set(arrays) - set(expected))
    missing = [n for n in expected if n not in arrays]
    if unknown or missing:
        raise _error(
            f"{where}: piece {piece.name!r} {role}s must be exactly {expected}; "
            f"missing {missing}, unknown {unknown}"
        )
    for spec in specs:
        arr = arrays[spec.name]
        dtype = str(getattr(arr, "dtype", type(arr).__name__))
        if dtype != spec.dtype:
            raise _error(
                f"{where}: {piece.name} {role} {spec.name!r} is {dtype}; contract v{CONTRACT_VERSION} says "
                f"{spec.dtype}"
            )
        shape = tuple(int(x) for x in getattr(arr, "shape", ()))
        if len(shape) != len(spec.shape):
            raise _error(
                f"{where}: {piece.name} {role} {spec.name!r} has shape {shape}; expected rank "
                f"{len(spec.shape)} {spec.shape}"
            )
        for axis, (dim, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(dim, int):
                if got != dim:
                    raise _error(
                        f"{where}: {piece.name} {role} {spec.name!r} axis {axis} is {got}; expected {dim}"
                    )
                continue
            if dim in sizes and sizes[dim] != got:
                raise _error(
                    f"{where}: {piece.name} {role} {spec.name!r} axis {axis} ({dim}) is {got}, but {dim} "
                    f"is {sizes[dim]} elsewhere in the same call"
                )
            sizes[dim] = got
            if ranges is not None and dim in ranges:
                r = ranges[dim]
                if not r.min <= got <= r.max:
                    raise _error(
                        f"{where}: {piece.name} {role} {spec.name!r} dim {dim} = {got} is outside the "
                        f"bundle's range [{r.min}, {r.max}]"
                    )
    for dim, (kind, (a, b)) in DERIVED_DIMS.items():
        if dim in sizes and a in sizes and b in sizes:
            want = sizes[a] * sizes[b] if kind == "mul" else sizes[a] + sizes[b]
            if sizes[dim] != want:
                op = "*" if kind == "mul" else "+"
                raise _error(
                    f"{where}: {piece.name} dim {dim} = {sizes[dim]}; contract needs {dim} = {a} {op} {b} "
                    f"= {want}"
                )
    return sizes


def bind(
    piece: PieceSpec, feeds: dict[str, Any], ranges: dict[str, DimRange] | None = None, where: str = "feeds"
) -> dict[str, int]:
    """Check feeds against the contract (names, dtypes, ranks, static dims, consistent named dims, ranges).

    Returns the named dim sizes. Raises ContractError naming the tensor, the expectation and what was found.
    """
    return _check(piece, piece.inputs, feeds, "input", ranges, {}, where)


def assert_conforms(
    piece: PieceSpec, outputs: dict[str, Any], sizes: dict[str, int] | None = None, where: str = "outputs"
) -> dict[str, int]:
    """Check outputs like `bind` checks inputs; `sizes` from `bind` ties output dims to the input dims."""
    return _check(piece, piece.outputs, outputs, "output", None, dict(sizes or {}), where)


def to_json(d: Dims) -> dict[str, Any]:
    """The serialised contract written into a bundle's manifest."""
    return {
        "contract_version": CONTRACT_VERSION,
        "dims": asdict(d),
        "pieces": {
            name: {
                "inputs": [asdict(t) for t in p.inputs],
                "outputs": [asdict(t) for t in p.outputs],
            }
            for name, p in pieces(d).items()
        },
        "ops": {k: asdict(v) for k, v in OPS.items()},
    }


def cdefs(op_key: str) -> str:
    """Compiler definitions for the C++ plugin, so its registration strings have one source."""
    op = OPS[op_key]
    return (
        f'-DHULU_PLUGIN_NAME=\\"{op.name}\\" -DHULU_PLUGIN_VERSION=\\"{op.version}\\" '
        f'-DHULU_PLUGIN_NAMESPACE=\\"{op.plugin_namespace}\\"'
    )


def _by_name(specs: tuple[TensorSpec, ...], name: str, piece: str) -> TensorSpec:
    for s in specs:
        if s.name == name:
            return s
    from hulurt.errors import ContractError

    raise ContractError(f"piece {piece!r} has no tensor {name!r}; it has {[s.name for s in specs]}")


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--cdefs":
        print(cdefs(argv[1]))
        return 0
    print("usage: python -m hulurt.contract --cdefs OP_KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
