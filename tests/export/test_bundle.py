"""Bundles: layout, manifest strictness, corruption rejected naming the file, size mismatch and interrupted builds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from hulurt.contract import CONTRACT_VERSION
from hulurt.errors import ManifestError
from hulurt.manifest import load_manifest

from huluexport.errors import ConfigError
from huluexport.export import onnx as onnx_export
from huluexport.export.pipeline import BuildOptions, build


@pytest.fixture()
def fp32_copy(bundle_factory, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_factory("qwen2", "fp32"), dst)
    return dst


def _edit_manifest(bundle: Path, fn) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_bundle_layout_and_manifest(bundle_factory) -> None:
    b = bundle_factory("qwen2", "fp32")
    m = load_manifest(b, verify_hashes=True)
    assert m.contract_version == CONTRACT_VERSION and m.precision == "fp32"
    assert set(m.pieces) == {"vision", "embed", "decoder"}
    for e in m.pieces.values():
        assert (b / e.file).is_file() and e.data is not None and (b / e.data).stat().st_size > 0
    assert m.tokens.image == 290 and m.tokens.eos == (288, 286)
    assert m.tokenizer.tokenizer == "tokenizer.json" and m.tokenizer.chat_template == "chat_template.json"
    assert m.limits.max_context == m.dim_ranges["total_len"].max == 512
    assert {"torch", "onnx", "onnxruntime", "huluexport"} <= set(m.tools)
    assert m.reduction.threshold == pytest.approx(0.1)
    assert not list(b.parent.glob(f".{b.name}.partial-*")), "temporary build directory left behind"


def test_graph_io_equals_contract_and_weights_are_external(bundle_factory) -> None:
    for precision in ("fp32", "fp16"):
        m = load_manifest(bundle_factory("qwen2", precision), verify_hashes=False)
        for name, spec in m.specs().items():
            if name not in m.pieces:
                continue
            model = onnx.load(str(m.piece_path(name)), load_external_data=False)
            for values, specs in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
                got = [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                        tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)) for v in values]
                assert got == [(t.name, t.dtype, t.shape) for t in specs]
            inits = {i.name: i for i in model.graph.initializer}
            big = [i for i in inits.values() if i.data_location == onnx.TensorProto.EXTERNAL]
            assert big, f"{name}: weights should live in external data"
            # the exporter's weight transposes were folded into stored tensors
            assert not [n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in inits]


def test_fp16_keeps_norms_softmax_rope_in_fp32(bundle_factory) -> None:
    import onnx_ir as ir

    for name in ("vision", "decoder"):
        model = ir.load(str(bundle_factory("qwen2", "fp16") / f"{name}.onnx"))
        norms = [n for n in model.graph if n.op_type in ("LayerNormalization", "Softmax", "ReduceMean")]
        assert norms, name
        for n in norms:
            assert n.inputs[0].dtype == ir.DataType.FLOAT, f"{name}: {n.op_type} {n.name} runs in {n.inputs[0].dtype}"
        sin_cos = [n for n in model.graph if n.op_type in ("Sin", "Cos")]
        for n in sin_cos:
            assert n.outputs[0].dtype == ir.DataType.FLOAT
        matmul_types = {n.inputs[1].dtype for n in model.graph if n.op_type in ("MatMul", "Gemm")
                        and n.inputs[1] is not None and n.inputs[1].is_initializer()}
        assert matmul_types == {ir.DataType.FLOAT16}, f"{name}: weights of matmuls are {matmul_types}"


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda b: _edit_manifest(b, lambda d: d.update(surprise=1)), r"manifest\.json: field 'surprise': unknown key"),
        (lambda b: _edit_manifest(b, lambda d: d["pieces"]["vision"].update(fp8=True)), r"'pieces\.vision\.fp8'"),
        (lambda b: _edit_manifest(b, lambda d: d.update(contract_version=99)),
         r"manifest\.json: field 'contract_version'.*v1, found 99"),
        (lambda b: _edit_manifest(b, lambda d: d.pop("tokens")), r"field 'tokens': missing"),
        (lambda b: _edit_manifest(b, lambda d: d["dim_ranges"]["seq_len"].update(min=9999)),
         r"field 'dim_ranges\.seq_len': dim range needs"),
        (lambda b: _edit_manifest(b, lambda d: d["files"].update({"../escape": {"sha256": "0", "bytes": 1}})),
         r"field 'files\.\.\./escape': file paths must be relative and inside the bundle"),
        (lambda b: _edit_manifest(b, lambda d: d.update(precision="int4")), r"field 'precision': expected one of"),
        (lambda b: (b / "manifest.json").write_text("{not json"), r"manifest\.json: unreadable JSON"),
        (lambda b: (b / "manifest.json").unlink(), r"manifest\.json: no manifest\.json"),
    ],
)
def test_bad_manifest_rejected_naming_file_and_field(fp32_copy: Path, corrupt, match: str) -> None:
    corrupt(fp32_copy)
    with pytest.raises(ManifestError, match=match):
        load_manifest(fp32_copy)


def test_edited_graph_rejected(fp32_copy: Path) -> None:
    g = fp32_copy / "decoder.onnx"
    raw = g.read_bytes()
    i = raw.index(b"node_")
    g.write_bytes(raw[:i] + b"NODE_" + raw[i + 5:])  # a renamed node: same size, only the hash can tell
    with pytest.raises(ManifestError, match=r"decoder\.onnx: sha256 .* does not match"):
        load_manifest(fp32_copy)
    load_manifest(fp32_copy, verify_hashes=False)  # the size check alone passes: hashing is what caught it


def test_truncated_or_missing_data_rejected(fp32_copy: Path) -> None:
    data = fp32_copy / "vision.onnx.data"
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ManifestError, match=r"vision\.onnx\.data: is \d+ bytes, .* records \d+ \(truncated"):
        load_manifest(fp32_copy, verify_hashes=False)
    data.unlink()
    with pytest.raises(ManifestError, match=r"vision\.onnx\.data: listed in .* but missing"):
        load_manifest(fp32_copy, verify_hashes=False)


def test_checkpoint_not_matching_size_rejected_before_export(ckpt_qwen2: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(ConfigError, match=r"config\.json: checkpoint does not match --size 7b: decoder\.hidden = 64"):
        build(BuildOptions(out=out, checkpoint=ckpt_qwen2, size="7b"))
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing was started


def test_interrupted_build_leaves_nothing(ckpt_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the first trace

    monkeypatch.setattr(onnx_export, "export_graph", interrupted)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        build(BuildOptions(out=out, checkpoint=ckpt_qwen2))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(ckpt_qwen2: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        build(BuildOptions(out=out, checkpoint=ckpt_qwen2))


def test_random_weights_are_deterministic_and_sliced() -> None:
    from huluexport.devices import get_target
    from huluexport.export.pipeline import resolve, slice_layers, weight_source

    cfg, w = resolve(BuildOptions(out=Path("unused"), size="7b", random_weights=True, layers=2, precision="fp16"))
    assert w.kind == "random" and w.layers == 2 and cfg.decoder.layers == 28  # the full config; sliced later
    sliced = slice_layers(cfg, 2)
    assert (sliced.decoder.layers, sliced.vision.layers, sliced.decoder.hidden) == (2, 2, 3584)
    src = weight_source(cfg, w)
    a = src("decoder.layers.1.input_layernorm.weight")
    assert a.shape == (3584,) and float(a.std()) > 1e-2
    assert (a == src("decoder.layers.1.input_layernorm.weight")).all()  # same name, same values (verify relies on it)
    assert not (a == src("decoder.layers.0.input_layernorm.weight")).all()
    with pytest.raises(ConfigError, match="--random-weights needs --size"):
        resolve(BuildOptions(out=Path("unused"), random_weights=True))
    with pytest.raises(ConfigError, match="--layers 40: expected 1..28"):
        slice_layers(cfg, 40)
    with pytest.raises(ConfigError, match="--target 'moon'"):
        get_target("moon")
