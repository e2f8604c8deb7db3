"""Cloned layers (huluexport/export/passes/replicate_layers.py) vs every layer traced (`trace_all_layers`):
tiny Qwen2 and Qwen3 models deeper than the traced 3 layers (5 decoder, 4 vision layers), every layered piece
(vision, decoder, decoder_gqa). The graphs must be the same node for node, give bit-identical onnxruntime
outputs with the same weights, and pass `verify` with the same table and greedy tokens."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from e2e.bundles import DEEP_LAYERS, deep_bundle, deep_checkpoint
from hulurt.contract import pieces as contract_pieces
from hulurt.manifest import load_manifest

from huluexport.export.onnx import sample_inputs
from huluexport.export.passes.replicate_layers import TRACED_LAYERS, relabel
from huluexport.validate import verify

PIECES = {"vision": DEEP_LAYERS[1], "decoder": DEEP_LAYERS[0], "decoder_gqa": DEEP_LAYERS[0]}
_LAYER = re.compile(r"(?:^|[.'\s])layers\.(\d+)(?=[.'\]]|$)")


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bundles(kind: str) -> tuple[Path, Path]:
    """(replicated, traced) deep tiny bundles, fp32, both decoder forms."""
    return deep_bundle(kind, trace_all_layers=False), deep_bundle(kind, trace_all_layers=True)


def _load(bundle: Path, piece: str) -> ir.Model:
    return ir.load(bundle / f"{piece}.onnx")


def _init_key(v: ir.Value) -> tuple:
    """A weight by its name; a constant the exporter or the fold named (val_123) by its content."""
    if re.fullmatch(r"val_\d+", v.name or "") and v.const_value is not None:
        return ("const", v.dtype, tuple(v.shape), v.const_value.tobytes())
    return ("init", v.name, v.dtype, tuple(v.shape))


_COMMUTATIVE = {"Add", "Mul"}  # IEEE + and * are commutative bit for bit


def _wiring(g: ir.Graph) -> list[tuple]:
    """Each node in graph order: op, domain, attributes, and where each input comes from (a graph input or
    initializer by name, or a node by position and output index); intermediate names are ignored.

    Two choices torch.export makes per trace are normalised, both exact: which graph input a Shape node reads
    among those of the same shape (the decoder's past_len comes from past_key_values.0.key in a 3-layer trace,
    from .1.key in a 5-layer one), and the operand order of Add/Mul (seq_len + past_len)."""
    pos = {o: (k, j) for k, n in enumerate(g) for j, o in enumerate(n.outputs)}
    out = []
    for n in g:
        ins = []
        for v in n.inputs:
            if v is None:
                ins.append(None)
            elif v in pos:
                ins.append(("node", *pos[v]))
            else:
                ins.append(("input", v.name) if v.is_graph_input() else _init_key(v))
                if n.op_type == "Shape" and v.is_graph_input():
                    ins[-1] = ("shape of an input", v.dtype, str(v.shape))
        attrs = sorted((k, repr(a.value) if not isinstance(a.value, ir.TensorProtocol) else
                        (a.value.dtype, tuple(a.value.shape), a.value.tobytes())) for k, a in n.attributes.items())
        if n.op_type in _COMMUTATIVE and n.domain == "":
            ins.sort(key=repr)
        out.append((n.domain, n.op_type, n.overload, tuple(attrs), tuple(ins), len(n.outputs)))
    return out


def _io(values) -> list[tuple]:
    return [(v.name, v.dtype, str(v.shape)) for v in values]


def _layer_counts(g: ir.Graph) -> dict[int, int]:
    counts: dict[int, int] = {}
    for n in g:
        found = set(_LAYER.findall(n.metadata_props.get("pkg.torch.onnx.name_scopes", "")))
        if len(found) == 1:
            k = int(found.pop())
            counts[k] = counts.get(k, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("piece", list(PIECES))
def test_same_graph_as_traced(bundles, piece: str) -> None:
    rep, tr = (_load(b, piece) for b in bundles)
    layers = PIECES[piece]
    assert layers > TRACED_LAYERS  # else nothing was cloned and the comparison is trivial

    # the replicated graph really has every layer: each traced layer's scope with as many nodes as layer 1
    counts = _layer_counts(rep.graph)
    assert sorted(counts) == list(range(layers)), counts
    assert all(counts[k] == counts[1] for k in range(2, layers)), counts
    assert counts == _layer_counts(tr.graph)

    assert _io(rep.graph.inputs) == _io(tr.graph.inputs)
    assert _io(rep.graph.outputs) == _io(tr.graph.outputs)
    assert [v.name for v in rep.graph.outputs] == [t.name for t in contract_pieces(
        load_manifest(bundles[0]).dims)[piece].outputs]
    assert sorted(map(_init_key, rep.graph.initializers.values())) == sorted(
        map(_init_key, tr.graph.initializers.values()))
    # the cloned layers' weights are named as a full trace names them (attach_weights reads them by name)
    last = {k for k in rep.graph.initializers if relabel(k, layers - 1, 1) is not None}
    assert last and all(k.split(".")[-1] in ("weight", "bias", "T") for k in last), last
    assert _wiring(rep.graph) == _wiring(tr.graph)
    assert rep.opset_imports == tr.opset_imports


def _feeds(bundle: Path, piece: str) -> dict[str, np.ndarray]:
    spec = contract_pieces(load_manifest(bundle).dims)[piece]
    feeds = {t.name: a.numpy() for t, a in zip(spec.inputs, sample_inputs(spec))}
    if piece == "decoder_gqa":  # a consistent cache position: 5 new rows after 3 cached ones, capacity 16
        feeds["seqlens_k"] = np.array([7], np.int32)
        feeds["total_sequence_length"] = np.array(8, np.int32)
    return feeds


@pytest.mark.slow
@pytest.mark.parametrize("piece", list(PIECES))
def test_bit_identical_outputs(bundles, piece: str) -> None:
    import onnxruntime as ort

    feeds = _feeds(bundles[0], piece)
    outs = []
    for b in bundles:
        sess = ort.InferenceSession(str(b / f"{piece}.onnx"), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, feeds))
    assert len(outs[0]) == len(outs[1]) >= 1
    for a, b in zip(*outs):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b), float(np.abs(a.astype(np.float64) - b).max())
        assert np.isfinite(a).all() and (a.size == 0 or np.std(a.astype(np.float64)) > 0 or a.dtype == np.int64)


@pytest.mark.slow
def test_verify_same_as_traced(kind: str, bundles) -> None:
    rep, tr = (verify(b, deep_checkpoint(kind), steps=8) for b in bundles)
    print(rep.table())
    assert rep.ok and tr.ok, rep.table()
    assert len(rep.rows) == len(tr.rows) >= 12
    for a, b in zip(rep.rows, tr.rows):
        assert (a.piece, a.case, a.output) == (b.piece, b.case, b.output)
        assert (a.max_abs, a.max_rel, a.cosine, a.top1, a.ref_std) == (b.max_abs, b.max_rel, b.cosine, b.top1,
                                                                       b.ref_std), (a, b)
    assert rep.tokens_bundle == tr.tokens_bundle and rep.tokens_bundle == rep.tokens_reference
    assert any("gqa" in k for k in rep.tokens_bundle)


# --------------------------------------------------------------------------------------------------
# The pass refuses what it does not expect (one shallow trace of the tiny vision piece, folded as `build` does)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shallow_vision(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, set[str]]:
    """(the 3-layer vision graph after detach + fold, saved with zero weights; the 4-layer contract spec; the
    names of the detached weights)."""
    import torch

    from huluexport.config import preset, to_dims
    from huluexport.export import onnx as onnx_export
    from huluexport.export.passes import fold_constants, name_dims, replicate_layers
    from huluexport.export.pieces import make_pieces
    from huluexport.reference.model import HuluMed

    base = preset("tiny")
    deep = base.replace(vision=dataclasses.replace(base.vision, layers=4))
    shallow = replicate_layers.shallow(deep)
    assert shallow.vision.layers == TRACED_LAYERS
    with torch.device("meta"):
        model = HuluMed(shallow)
    spec = contract_pieces(to_dims(shallow))["vision"]
    m = onnx_export.export_graph(make_pieces(model)["vision"], spec)
    m = replicate_layers.folding(fold_constants.run)(name_dims.run(replicate_layers.detach(m), spec))
    detached = {k for k, v in m.graph.initializers.items() if v.const_value is None}
    for k in detached:
        v = m.graph.initializers[k]
        v.const_value = ir.tensor(np.zeros(tuple(v.shape), np.float32), name=k)
    path = tmp_path_factory.mktemp("shallow") / "vision.onnx"
    ir.save(m, path)
    return path, contract_pieces(to_dims(deep))["vision"], detached


def _detached(shallow: tuple[Path, Any, set[str]]) -> ir.Model:
    path, _, detached = shallow
    m = ir.load(path)
    for k in detached:
        m.graph.initializers[k].const_value = None
    return m


def _layer_nodes(m: ir.Model, layer: int) -> list[ir.Node]:
    return [n for n in m.graph if f"layers.{layer}'" in n.metadata_props.get("pkg.torch.onnx.name_scopes", "")]


def test_replicates_the_shallow_trace(shallow_vision) -> None:
    from huluexport.export.passes.replicate_layers import run

    spec = shallow_vision[1]
    m = run(_detached(shallow_vision), "vision", spec, 4)
    counts = _layer_counts(m.graph)
    assert sorted(counts) == [0, 1, 2, 3] and counts[3] == counts[1] > 20
    assert [v.name for v in m.graph.inputs] == [t.name for t in spec.inputs]
    new = [k for k in m.graph.initializers if ".layers.3." in k]
    assert len(new) == len([k for k in m.graph.initializers if ".layers.1." in k]) >= 12
    assert all(m.graph.initializers[k].const_value is None for k in new)  # attach_weights gives them data


def _tamper_attribute(m: ir.Model) -> None:
    node = next(n for n in _layer_nodes(m, 2) if n.op_type == "LayerNormalization")
    node.attributes["epsilon"] = ir.AttrFloat32("epsilon", 0.5)


def _tamper_weight(m: ir.Model) -> None:  # layer 2 reads a weight of layer 1
    node = next(n for n in _layer_nodes(m, 2) if any(".layers.2." in (v.name or "") for v in n.inputs if v))
    k = next(k for k, v in enumerate(node.inputs) if v is not None and ".layers.2." in (v.name or ""))
    node.replace_input_with(k, m.graph.initializers[node.inputs[k].name.replace(".layers.2.", ".layers.1.")])


def _tamper_carried(m: ir.Model) -> None:  # layer 2 reads another value of layer 1 than layer 1's output
    one = {o for n in _layer_nodes(m, 1) for o in n.outputs}
    node = next(n for n in _layer_nodes(m, 2) if any(v in one for v in n.inputs))
    k = next(k for k, v in enumerate(node.inputs) if v in one)
    node.replace_input_with(k, _layer_nodes(m, 1)[3].outputs[0])


def _tamper_scopes(m: ir.Model) -> None:  # no node says it belongs to layer 2
    for n in _layer_nodes(m, 2):
        n.metadata_props["pkg.torch.onnx.name_scopes"] = "['']"


def _tamper_data(m: ir.Model) -> None:  # weights not detached
    for v in m.graph.initializers.values():
        if v.const_value is None:
            v.const_value = ir.tensor(np.zeros(tuple(v.shape), np.float32), name=v.name)


@pytest.mark.parametrize("tamper, message", [
    (_tamper_attribute, "attributes differ"),
    (_tamper_weight, "layer 2 reads layer 1.s own"),
    (_tamper_carried, "(not the same kind of value|stands for two values|not wired alike)"),
    (_tamper_scopes, "expected the traced layers 0..2"),
    (_tamper_data, "has data"),
])
def test_refuses_unexpected_boundary(shallow_vision, tamper, message: str) -> None:
    from huluexport.errors import ExportError
    from huluexport.export.passes.replicate_layers import run

    m = _detached(shallow_vision)
    tamper(m)
    with pytest.raises(ExportError, match=f"^vision: cannot replicate layer 1: .*{message}"):
        run(m, "vision", shallow_vision[1], 4)


def test_refuses_a_contract_of_other_names(shallow_vision) -> None:
    from huluexport.errors import ExportError
    from huluexport.export.passes.replicate_layers import run

    spec = shallow_vision[1]
    wrong = dataclasses.replace(spec, inputs=spec.inputs[:-1])
    with pytest.raises(ExportError, match="^vision: replicated graph inputs .* are not the contract's"):
        run(_detached(shallow_vision), "vision", wrong, 4)


def test_relabel() -> None:
    assert relabel("vision_encoder.encoder.layers.1.mlp.fc1.weight.T", 1, 12) == (
        "vision_encoder.encoder.layers.12.mlp.fc1.weight.T")
    assert relabel("past_key_values.1.key", 1, 3) == "past_key_values.3.key"
    assert relabel("layers.2.mlp.up_proj.weight", 1, 3) is None  # another layer's
    assert relabel("mm_projector.readout.0.weight", 1, 3) is None
    assert relabel("val_12", 1, 3) is None
