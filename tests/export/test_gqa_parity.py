"""The gqa-static decoder form (decoder_gqa.onnx: com.microsoft::GroupQueryAttention over in-place KV buffers)
vs the PyTorch reference on onnxruntime CPU, through hulurt.static_decode (the code the CUDA path runs).

fp32: logits within the fp32 entry, greedy tokens identical for 16 steps, cached K/V rows equal to the
reference's `present`; fp16: cosine and top-1 per the tolerance table. Prompts: text only and text + a
2-frame merged visual input (reference visual rows scattered by the reference, so only the decoder is tested).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hulurt.backends import open_session
from hulurt.backends.base import BackendOptions
from hulurt.manifest import load_manifest
from hulurt.static_decode import StaticDecoder

from huluexport.export.bundle_reference import reference_for_bundle
from huluexport.reference.model import VisualInput
from huluexport.tolerances import get

STEPS = 16


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _reference(model, cfg, with_visual: bool):
    """Prompt embeds, prefill + 16 greedy steps of the reference: logits per call, tokens, final KV."""
    t = cfg.tokens
    rng = np.random.default_rng(3)
    text = [int(x) for x in rng.integers(0, min(t.image, cfg.decoder.vocab) - 1, size=7)]
    visuals, ids = [], [t.im_start, *text]
    if with_visual:
        patches = (rng.integers(0, 256, size=(2, 16, 588)) / 127.5 - 1.0).astype(np.float32)
        vis = VisualInput(patches, (4, 4), 2, "video")
        visuals = [vis]
        ids = [t.im_start, *text[:3], *[t.image] * (vis.frames * vis.tokens_per_frame), *text[3:]]
    with torch.no_grad():
        prep = model.prepare_inputs(ids, visuals)
        logits, past = model.decoder(prep.inputs_embeds, prep.position_ids)
        rows, tokens = [logits[0, -1].numpy()], [int(logits[0, -1].argmax())]
        pos = prep.inputs_embeds.shape[1]
        for _ in range(STEPS):
            e = model.decoder.embed(torch.tensor([[tokens[-1]]], dtype=torch.int64))
            logits, past = model.decoder(e, torch.tensor([[pos]]), past)
            rows.append(logits[0, -1].numpy())
            tokens.append(int(logits[0, -1].argmax()))
            pos += 1
    kv = [p.numpy() for layer in past for p in layer]
    return prep.inputs_embeds.numpy(), np.stack(rows), tokens, kv


def _static(bundle, capacity: int = 64) -> tuple[StaticDecoder, object]:
    m = load_manifest(bundle, verify_hashes=False)
    opts = BackendOptions(provider="cpu", threads=2)
    dec = open_session(m.piece_path("decoder_gqa"), opts)
    emb = open_session(m.piece_path("embed"), opts)
    return StaticDecoder(dec, emb, m.dims, capacity), m


@pytest.mark.parametrize("flavor, precision", [("qwen2", "fp32"), ("qwen3", "fp32"), ("qwen2", "fp16")])
def test_gqa_form_matches_reference(
    gqa_bundle_factory, ckpt_qwen2: Path, ckpt_qwen3: Path, flavor: str, precision: str
) -> None:
    bundle = gqa_bundle_factory(flavor, precision)
    checkpoint = {"qwen2": ckpt_qwen2, "qwen3": ckpt_qwen3}[flavor]  # folder builds record no local path
    static, m = _static(bundle)
    assert "decoder" not in m.pieces and "decoder_gqa" in m.pieces  # only the gqa form was asked for
    cfg, model = reference_for_bundle(m, checkpoint)
    tol = get("decoder_gqa", precision, "ort")
    act = np.dtype(m.dims.act_dtype)
    for with_visual in (False, True):
        embeds, want, tokens, kv = _reference(model, cfg, with_visual)
        static.begin(embeds.shape[1] + STEPS)
        tok, row = static.prefill(embeds.astype(act), want_logits=True)
        got, got_tokens = [row[0]], [tok]
        for ref_tok in tokens[:STEPS]:  # teacher-forced by the reference's greedy tokens
            tok, row = static.step(ref_tok, want_logits=True)
            got.append(row[0])
            got_tokens.append(tok)
        got_a = np.stack(got)
        assert [int(r.argmax()) for r in got_a] == got_tokens  # the graph's next_token is the argmax
        assert static.length == embeds.shape[1] + STEPS
        std = float(want.std())
        assert std > 1e-2  # non-degenerate logits
        if precision == "fp32":
            err = float(np.abs(got_a - want).max())
            print(f"{flavor} {precision} visual={with_visual}: logits max abs {err:.3g}")
            assert err <= tol.max_abs, (with_visual, err)
            assert got_tokens == tokens, (with_visual, got_tokens, tokens)  # 16 greedy steps identical
            # the in-place buffers hold exactly the reference's present rows 0..T-1
            for buf, ref in zip(static.kv, kv):
                rows = buf.numpy()[:, :, : ref.shape[2]]
                assert ref.shape[2] == static.length and np.abs(rows - ref).max() <= tol.max_abs
        else:
            cosine = min(_cos(g, w) for g, w in zip(got_a, want))
            top1 = float(np.mean([int(g.argmax()) == int(w.argmax()) for g, w in zip(got_a, want)]))
            print(f"{flavor} {precision} visual={with_visual}: min cosine {cosine:.6f}, top-1 {top1:.3f}")
            assert cosine >= tol.min_cosine and top1 >= tol.min_top1, (with_visual, cosine, top1)


def test_gqa_chunked_prefill_equals_one_call(gqa_bundle_factory) -> None:
    """The same op appends a chunk after cached rows ("subsequent prompt"): chunks of 1, 3 and the rest give
    the one-call logits and KV rows (fp32)."""
    bundle = gqa_bundle_factory("qwen2", "fp32")
    one, _ = _static(bundle)
    chunked, m = _static(bundle)
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, 11, m.dims.hidden)).astype(np.float32)
    one.begin(11)
    tok_one, row_one = one.prefill(embeds, want_logits=True)
    chunked.begin(11)
    for a, b in ((0, 1), (1, 4), (4, 11)):
        tok, row = chunked.prefill(embeds[:, a:b], want_logits=True)
    assert tok == tok_one
    tol = get("decoder_gqa", "fp32", "ort").max_abs
    assert np.abs(row - row_one).max() <= tol
    for x, y in zip(one.kv, chunked.kv):
        assert np.abs(x.numpy()[:, :, :11] - y.numpy()[:, :, :11]).max() <= tol


@pytest.mark.parametrize("flavor", ["qwen2", "qwen3"])  # packed q/k/v + RoPE inside the attention; separate
def test_verify_checks_the_gqa_form(gqa_bundle_factory, ckpt_qwen2, ckpt_qwen3, flavor: str) -> None:
    """`huluexport verify` on a bundle with only decoder_gqa: its rows use the decoder_gqa entry; tokens identical."""
    from huluexport.validate import verify

    checkpoint = {"qwen2": ckpt_qwen2, "qwen3": ckpt_qwen3}[flavor]
    report = verify(gqa_bundle_factory(flavor, "fp32"), checkpoint, steps=16)  # the manifest names no path
    print(report.table())
    assert report.ok, report.table()
    gqa_rows = [r for r in report.rows if r.piece == "decoder_gqa"]
    assert len(gqa_rows) == 4 and not [r for r in report.rows if r.piece == "decoder"]
    for name, ref in report.tokens_reference.items():
        assert name.endswith("gqa-static") and len(ref) == 17 and report.tokens_bundle[name] == ref


# Per decoder layer of the gqa-static graph, the nodes a decode step runs (docs/gpu.md "Kernels per layer"): the
# two residual adds fused into the norms, the attention, o/gate/up/down projections, SiLU (onnxruntime fuses
# Sigmoid * x into QuickGelu) times up. Qwen2.5: one packed q/k/v projection + its bias Add, RoPE inside the
# attention. Qwen3: q, k, v projections, per-head q/k norms, RoPE on q and k (Reshapes are views). Layer 0 has a
# plain input norm instead of the fused add.
_LAYER_OPS = {
    "qwen2": {"MatMul": 5, "Add": 1, "GroupQueryAttention": 1, "SkipSimplifiedLayerNormalization": 2,
              "Sigmoid": 1, "Mul": 2},
    "qwen3": {"MatMul": 7, "SimplifiedLayerNormalization": 2, "Reshape": 4, "RotaryEmbedding": 2,
              "GroupQueryAttention": 1, "SkipSimplifiedLayerNormalization": 2, "Sigmoid": 1, "Mul": 2},
}
# what must not survive onnxruntime's session optimisation anywhere in the graph: the unfused RMSNorm and
# rotate-half chains, and the RoPE table subgraph (constant: folded when the session opens)
_UNFUSED = {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Neg", "Slice", "Concat", "Cos", "Sin", "Range", "Sigmoid"}


@pytest.mark.parametrize("flavor", ["qwen2", "qwen3"])
def test_gqa_form_runs_a_few_fused_ops_per_layer(gqa_bundle_factory, flavor: str, tmp_path: Path) -> None:
    import collections
    import re

    import onnx
    import onnxruntime as ort

    bundle = gqa_bundle_factory(flavor, "fp32")
    path = bundle / "decoder_gqa.onnx"
    model = onnx.load(path, load_external_data=False)
    scope = re.compile(r"(?:^|[.'\s])layers\.(\d+)(?=[.'\]]|$)")
    per_layer: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for n in model.graph.node:
        scopes = {p.key: p.value for p in n.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
        found = set(scope.findall(scopes))
        if len(found) == 1:
            per_layer[int(found.pop())][n.op_type] += 1
    layers = load_manifest(bundle, verify_hashes=False).dims.layers
    assert sorted(per_layer) == list(range(layers)) and layers >= 2
    for i in range(1, layers):
        assert dict(per_layer[i]) == _LAYER_OPS[flavor], (i, dict(per_layer[i]))
    first = dict(_LAYER_OPS[flavor])
    first["SkipSimplifiedLayerNormalization"] -= 1
    first["SimplifiedLayerNormalization"] = first.get("SimplifiedLayerNormalization", 0) + 1
    assert dict(per_layer[0]) == first, dict(per_layer[0])

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    assert not _UNFUSED & set(ops), ops
    assert ops["QuickGelu"] == layers and ops["GroupQueryAttention"] == layers, ops
