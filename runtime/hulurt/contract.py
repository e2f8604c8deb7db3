"""THE single declaration of the exported pieces' I/O and of the custom op (stdlib only, Python 3.10).

The exporter (dynamic axes), the TensorRT builder (profiles), the manifest, the runtime's input checks,
the tests and the kernel build (`python -m hulurt.contract --cdefs token_reduce`) all derive from here.

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
        "_get_compression_mask / _compress_visual_tokens (ARCHITECTURE.md 6.2)."
    ),
)

OPS: dict[str, OpSpec] = {"token_reduce": TOKEN_REDUCE}


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
    token_reduce = PieceSpec(
        "token_reduce",
        inputs=(patches,),
        outputs=(TensorSpec("keep_mask", "bool", ("n_frames", "n_groups")),),
    )
    return {p.name: p for p in (vision, embed, decoder, token_reduce)}


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
