"""Deepen a shallow traced graph to the model's depth by cloning one layer's nodes (trace + fold cost no longer
grow with the number of layers).

The piece is traced with TRACED_LAYERS layers. Layer 0 differs from the others in the traced graph (the exporter
creates the constants the later layers reuse), so layer 1 is the template and layer 2 the check: before
anything is cloned, layer 2 must be layer 1 node for node (op, domain, attributes), and every value layer 1
reads from outside itself must be, in layer 2, one of

    the same value                    shared: rotary cos/sin, the mask, shape constants, layer 0's constants
    the name with the index 1 -> 2    per layer: past_key_values.1.key -> .2.key, layers.1.*.weight -> layers.2.*
    a value computed by layer 1       carried: the hidden state layer 1 hands to layer 2

and layer 1's values used outside itself must be read by layer 2 only or be graph outputs named by index
(present.1.key). Anything else raises ExportError naming the piece and the value. Layers 3..N-1 are then
clones of layer 1 appended after layer 2 (carried values chained, per-layer inputs, outputs and weights named
as a full trace names them), and the tail (final norm, projector) reads the last clone instead of layer 2.

    before: ... L0 -> L1 -> L2 -> tail          (traced, 3 layers)
    after:  ... L0 -> L1 -> L2 -> L3 ... L{N-1} -> tail

Weights must be detached (initializers without data, `detach`) while the shallow graph is folded and cloned:
the clones' weights get their data afterwards from passes/attach_weights.py by name, and the fold never reads
a weight. Layer boundaries come from the exporter's node metadata (module scopes `layers.{i}`); folding keeps
the nodes' order. README.md ("Deep models are traced 3 layers deep") and export/pipeline.py (piece_graph) say
where it runs in `build`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import onnx_ir as ir
import torch
from hulurt.contract import PieceSpec

from huluexport.config import HuluConfig
from huluexport.errors import ExportError

log = logging.getLogger(__name__)

TRACED_LAYERS = 3  # layer 0 (first, differs), layer 1 (template), layer 2 (check)
TEMPLATE, CHECK = 1, 2
_SCOPES = "pkg.torch.onnx.name_scopes"
_LAYER_SCOPE = re.compile(r"(?:^|[.'\s])layers\.(\d+)(?=[.'\]]|$)")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def relabel(name: str, old: int, new: int) -> str | None:
    """`name` with its one index component `old` replaced by `new` (layers.1.mlp.fc1.weight.T ->
    layers.5.mlp.fc1.weight.T, past_key_values.1.key -> past_key_values.5.key); None if the name has no
    component `old` or more than one numeric component."""
    parts = name.split(".")
    nums = [k for k, p in enumerate(parts) if p.isdigit()]
    if len(nums) != 1 or parts[nums[0]] != str(old):
        return None
    parts[nums[0]] = str(new)
    return ".".join(parts)


def _relabel_meta(text: str, new: int) -> str:
    return re.sub(r"(?<![\w])(layers\.)%d(?!\d)" % TEMPLATE, lambda m: f"{m.group(1)}{new}", text)


# --------------------------------------------------------------------------------------------------
# Weights without data while folding
# --------------------------------------------------------------------------------------------------


def detach(model: ir.Model) -> ir.Model:
    """Drop the traced (meta-device) data of every float initializer: the fold cannot read or merge a weight,
    and attach_weights gives each its lazy source later. Integer constants the exporter lifted keep theirs."""
    for value in model.graph.initializers.values():
        if value.dtype in _FLOATS and _is_meta(value.const_value):
            value.const_value = None
    return model


def _is_meta(t: object) -> bool:
    raw = getattr(t, "raw", None)
    return isinstance(raw, torch.Tensor) and raw.is_meta


class _NoDataNotice(logging.Filter):
    """onnx_ir's initializer deduplication warns once per initializer without data; here that is every
    detached weight, on purpose. Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no constant value" not in str(record.msg)


@contextmanager
def quiet_detached() -> Iterator[None]:
    log = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    f = _NoDataNotice()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


# --------------------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------------------


def _layer_of(node: ir.Node) -> int | None:
    scopes = node.metadata_props.get(_SCOPES)
    if not scopes:
        return None
    found = {int(m) for m in _LAYER_SCOPE.findall(scopes)}
    return found.pop() if len(found) == 1 else None


def _same_attrs(a: ir.Node, b: ir.Node) -> bool:
    if a.attributes.keys() != b.attributes.keys():
        return False
    for k, x in a.attributes.items():
        y = b.attributes[k]
        if x.type != y.type or x.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return False
        vx, vy = x.value, y.value
        if isinstance(vx, ir.TensorProtocol) or isinstance(vy, ir.TensorProtocol):
            if not (isinstance(vx, ir.TensorProtocol) and isinstance(vy, ir.TensorProtocol)):
                return False
            if vx.dtype != vy.dtype or vx.shape != vy.shape or vx.tobytes() != vy.tobytes():
                return False
        elif vx != vy:
            return False
    return True


class _Layers:
    """The template (layer 1) and check (layer 2) nodes of a traced graph and what crosses their boundary."""

    def __init__(self, model: ir.Model, piece: str) -> None:
        self.piece = piece
        nodes = list(model.graph)
        starts: dict[int, int] = {}
        for pos, node in enumerate(nodes):
            layer = _layer_of(node)
            if layer is not None:
                starts.setdefault(layer, pos)
        if sorted(starts) != list(range(TRACED_LAYERS)):
            self.fail(f"expected the traced layers 0..{TRACED_LAYERS - 1} in the node scopes, found "
                      f"{sorted(starts)}")
        t0, c0 = starts[TEMPLATE], starts[CHECK]
        if not starts[0] < t0 < c0:
            self.fail(f"layer scopes out of order (first nodes at {starts})")
        self.template = nodes[t0:c0]
        self.check = nodes[c0 : c0 + len(self.template)]
        if len(self.check) != len(self.template):
            self.fail(f"layer {CHECK} has fewer nodes ({len(self.check)}) than layer {TEMPLATE} "
                      f"({len(self.template)})")
        self.inner = {o for n in self.template for o in n.outputs}  # values computed by the template
        self.to_check: dict[ir.Value, ir.Value] = {}  # template value -> the check layer's
        self.shared: set[ir.Value] = set()
        self.carried: dict[ir.Value, ir.Value] = {}  # template input -> template value it becomes next layer
        self.per_layer: dict[ir.Value, str] = {}  # template input -> kind ("input" | "initializer")
        self._match()
        self._outputs(model.graph)

    def fail(self, what: str) -> None:
        raise ExportError(f"{self.piece}: cannot replicate layer {TEMPLATE}: {what}")

    def _match(self) -> None:
        for t, c in zip(self.template, self.check):
            where = f"node {t.name!r} ({t.op_type}) vs layer {CHECK}'s {c.name!r} ({c.op_type})"
            if (t.op_type, t.domain, t.overload, len(t.inputs), len(t.outputs)) != (
                c.op_type, c.domain, c.overload, len(c.inputs), len(c.outputs)
            ):
                self.fail(f"layer {CHECK} differs at {where}")
            if not _same_attrs(t, c):
                self.fail(f"attributes differ at {where}")
            for a, b in zip(t.inputs, c.inputs):
                self._input(a, b, where)
            for a, b in zip(t.outputs, c.outputs):
                self.to_check[a] = b

    def _input(self, a: ir.Value | None, b: ir.Value | None, where: str) -> None:
        if a is None or b is None:
            if a is not b:
                self.fail(f"optional input present in one layer only at {where}")
            return
        if a in self.inner:
            if self.to_check.get(a) is not b:
                self.fail(f"input {a.name!r} is not wired alike in layer {CHECK} at {where}")
            return
        if a is b:
            kind = "shared"
        elif b in self.inner:
            kind = "carried"
        elif a.is_graph_input() and b.is_graph_input() and relabel(a.name or "", TEMPLATE, CHECK) == b.name:
            kind = "input"
        elif a.is_initializer() and b.is_initializer() and relabel(a.name or "", TEMPLATE, CHECK) == b.name:
            kind = "initializer"
            if a.const_value is not None:
                self.fail(f"per-layer initializer {a.name!r} has data (weights must be detached first)")
        else:
            self.fail(f"input {a.name!r} of layer {TEMPLATE} is {b.name!r} in layer {CHECK}: neither shared, "
                      "carried from the previous layer nor named by the layer index")
        if kind == "shared" and (relabel(a.name or "", TEMPLATE, CHECK) is not None or a in self.per_layer):
            self.fail(f"layer {CHECK} reads layer {TEMPLATE}'s own {a.name!r}")
        if kind == "carried":
            pa, pb = a.producer(), b.producer()
            if pa is None or pb is None or (pa.op_type, a.index()) != (pb.op_type, b.index()):
                self.fail(f"layer {CHECK} reads {b.name!r} of layer {TEMPLATE} where layer {TEMPLATE} reads "
                          f"{a.name!r}, which is not the same kind of value")
            if self.carried.setdefault(a, b) is not b:
                self.fail(f"carried input {a.name!r} stands for two values of layer {TEMPLATE}")
        elif kind in ("input", "initializer"):
            self.per_layer[a] = kind
        else:
            self.shared.add(a)

    def _outputs(self, graph: ir.Graph) -> None:
        check_nodes = set(self.check)
        carried_out = set(self.carried.values())
        self.graph_outputs: list[ir.Value] = []
        for v in (o for n in self.template for o in n.outputs):
            if v.is_graph_output():
                if relabel(v.name or "", TEMPLATE, CHECK) != self.to_check[v].name or not self.to_check[
                    v
                ].is_graph_output():
                    self.fail(f"graph output {v.name!r} has no layer-{CHECK} counterpart named by index")
                self.graph_outputs.append(v)
            for use in v.uses():
                if use.node not in check_nodes and use.node not in self.template:
                    self.fail(f"{v.name!r} of layer {TEMPLATE} is read after layer {CHECK} by {use.node.name!r}")
                if use.node in check_nodes and v not in carried_out:
                    self.fail(f"layer {CHECK} reads {v.name!r} of layer {TEMPLATE} not as its carried input")
        if not self.carried:
            self.fail("no value is carried from one layer to the next")


def run(model: ir.Model, piece: str, spec: PieceSpec, layers: int) -> ir.Model:
    """Clone layer 1 of the TRACED_LAYERS-layer graph `model` into layers 3..layers-1; inputs and outputs are
    then put in the order of `spec` (the contract's piece for the full depth)."""
    if layers <= TRACED_LAYERS:
        raise ExportError(f"{piece}: replicate to {layers} layers: the traced graph has {TRACED_LAYERS} already")
    g = model.graph
    lay = _Layers(model, piece)
    names = {v.name for n in g for v in n.outputs} | {v.name for v in g.inputs} | set(g.initializers)
    prev = dict(lay.to_check)  # template value -> that value in the previous layer (layer 2 first)
    anchor = lay.check[-1]
    inside = set(lay.check)
    for i in range(TRACED_LAYERS, layers):
        prev, clones = _clone(g, lay, i, prev, names)
        g.insert_after(anchor, clones)
        anchor = clones[-1]
        inside.update(clones)
        g.outputs.extend(prev[v] for v in lay.graph_outputs)
    for t, old in lay.to_check.items():  # the tail reads the last layer instead of layer 2
        for use in list(old.uses()):
            if use.node not in inside:
                use.node.replace_input_with(use.idx, prev[t])
    _order(g, piece, spec)
    log.info("%s: layer %d cloned into layers %d..%d (%d nodes each)", piece, TEMPLATE, TRACED_LAYERS, layers - 1,
             len(lay.template))
    return model


def _clone(
    g: ir.Graph, lay: _Layers, i: int, prev: dict[ir.Value, ir.Value], names: set[str]
) -> tuple[dict[ir.Value, ir.Value], list[ir.Node]]:
    """Layer i as a copy of the template: (template value -> layer i's, layer i's nodes). New per-layer graph
    inputs and (data-less) initializers are registered in `g`; the nodes are not inserted."""
    image: dict[ir.Value, ir.Value] = {}

    def source(a: ir.Value | None) -> ir.Value | None:
        if a is None:
            return None
        if a in image:
            return image[a]
        if a in lay.carried:
            return prev[lay.carried[a]]
        if a in lay.shared:
            return a
        name = relabel(a.name or "", TEMPLATE, i)
        if name is None or name in names:
            lay.fail(f"{a.name!r} cannot be renamed for layer {i} ({name!r} exists)")
        assert name is not None
        new = ir.Value(name=name, shape=_shape(a), type=a.type, doc_string=a.doc_string)
        names.add(name)
        if lay.per_layer[a] == "input":
            g.inputs.append(new)
        else:
            g.initializers.add(new)  # no data yet: attach_weights gives it its source
        image[a] = new
        return new

    clones = []
    for t in lay.template:
        node = ir.Node(
            t.domain, t.op_type, [source(a) for a in t.inputs], list(t.attributes.values()),
            overload=t.overload, num_outputs=len(t.outputs), version=t.version,
            name=f"{t.name}.layer{i}" if t.name else None, doc_string=t.doc_string,
            metadata_props={k: _relabel_meta(v, i) for k, v in t.metadata_props.items()},
        )
        for a, b in zip(t.outputs, node.outputs):
            new_name = relabel(a.name or "", TEMPLATE, i) if a in lay.graph_outputs else f"{a.name}.layer{i}"
            b.name = _unique(new_name or f"{a.name}.layer{i}", names)
            b.shape, b.type, b.doc_string = _shape(a), a.type, a.doc_string
            image[a] = b
        clones.append(node)
    return image, clones


def _shape(v: ir.Value) -> ir.Shape | None:
    return None if v.shape is None else ir.Shape(list(v.shape.dims))


def _unique(name: str, names: set[str]) -> str:
    out, k = name, 1
    while out in names:
        out, k = f"{name}.{k}", k + 1
    names.add(out)
    return out


def _order(g: ir.Graph, piece: str, spec: PieceSpec) -> None:
    """Graph inputs and outputs in the contract's order; ExportError if the names are not exactly its."""
    for role, values, specs in (("inputs", g.inputs, spec.inputs), ("outputs", g.outputs, spec.outputs)):
        by_name = {v.name: v for v in values}
        want = [s.name for s in specs]
        if sorted(by_name) != sorted(want) or len(by_name) != len(values):
            raise ExportError(f"{piece}: replicated graph {role} {sorted(by_name)} are not the contract's {want}")
        values.clear()
        values.extend(by_name[n] for n in want)


# --------------------------------------------------------------------------------------------------
# Where it applies (export/pipeline.py)
# --------------------------------------------------------------------------------------------------


def shallow(cfg: HuluConfig) -> HuluConfig:
    """The model traced instead of `cfg`: at most TRACED_LAYERS decoder and vision layers."""
    return cfg.replace(
        decoder=dataclasses.replace(cfg.decoder, layers=min(cfg.decoder.layers, TRACED_LAYERS)),
        vision=dataclasses.replace(cfg.vision, layers=min(cfg.vision.layers, TRACED_LAYERS)),
    )


def depths(piece: str, cfg: HuluConfig, trace_cfg: HuluConfig) -> tuple[int, int]:
    """(layers of the piece in the bundle, layers traced); equal for embed and for models no deeper than
    the trace. A traced depth other than TRACED_LAYERS below the full one cannot be replicated."""
    part = {"vision": "vision", "decoder": "decoder", "decoder_gqa": "decoder"}.get(piece)
    if part is None:
        return 0, 0
    depth, traced = getattr(cfg, part).layers, getattr(trace_cfg, part).layers
    if traced != depth and traced != TRACED_LAYERS:
        raise ExportError(f"{piece}: traced {traced} layers of {depth}; replication needs {TRACED_LAYERS}")
    return depth, traced


def folding(fold: Callable[[ir.Model], ir.Model]) -> Callable[[ir.Model], ir.Model]:
    """`fold` run on a graph whose weights are detached (without the per-weight notices)."""

    def run_fold(model: ir.Model) -> ir.Model:
        with quiet_detached():
            return fold(model)

    return run_fold
