"""The runtime side: hulurt's Generator on the bundle's sessions."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from huluexport.bench.config import BenchConfig
from huluexport.bench.inputs import ByteIds, Tok, prepare_request
from huluexport.bench.measure import MemorySampler, PreparedSide, RunRecord, StageClock

# Runtime side: hulurt's Generator over onnxruntime sessions, each session timed from the outside


class TimedSession:
    """Wraps a hulurt Session; records (piece, seconds) of every run / run_bound call in `log`."""

    def __init__(self, inner: Any, piece: str, calls: list[tuple[str, float]]) -> None:
        self._inner, self._piece, self._calls = inner, piece, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self._inner.run(feeds)
        self._calls.append((self._piece, time.perf_counter() - t0))
        return out

    def run_bound(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self._inner.run_bound(*a, **kw)
        self._calls.append((self._piece, time.perf_counter() - t0))
        return out


def piece_weight_bytes(path: Path) -> int:
    """Bytes of the initializers (weights) of one ONNX graph, inline or external, read from the graph
    protobuf alone (external data is not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def bundle_info(bundle: Path) -> tuple[Any, dict[str, Any]]:
    from hulurt.manifest import load_manifest

    m = load_manifest(bundle, verify_hashes=False)
    files = {k: v.bytes for k, v in m.files.items()}
    piece_bytes = {}
    for name, pe in m.pieces.items():
        piece_bytes[name] = files.get(pe.file, 0) + (files.get(pe.data, 0) if pe.data else 0)
    info = {
        "piece_weight_bytes": {name: piece_weight_bytes(m.piece_path(name)) for name in m.pieces},
        "path": str(bundle),
        "name": f"{m.model.get('name', '?')} ({m.dims.layers} decoder layers, {m.precision})",
        "precision": m.precision,
        "target": m.target,
        "dims": dataclasses.asdict(m.dims),
        "piece_bytes": piece_bytes,
        "total_bytes": sum(files.values()),
        "weights": m.model.get("weights"),
    }
    return m, info


def prepare_runtime(cfg: BenchConfig, m: Any, media: list[Any]) -> PreparedSide:
    from hulurt.api import facts_of
    from hulurt.backends.base import BackendOptions, open_session
    from hulurt.generate import Generator, PromptFeed, VisualFeed
    from hulurt.sampling import SamplingConfig
    from hulurt.static_decode import select_decoder

    rss_before = MemorySampler()._rss()
    t0 = time.perf_counter()
    calls: list[tuple[str, float]] = []
    opts = BackendOptions(provider=cfg.extra.get("provider", "auto"), threads=cfg.threads or 0)
    # the decoder form hulurt.load() would choose for this provider (gqa-static on CUDA), or the forced one
    provider = opts.provider
    if provider == "auto":
        from hulurt.backends.ort import resolve_provider

        provider = resolve_provider("auto")
    dec_piece = select_decoder(provider, set(m.pieces), cfg.extra.get("decoder_form"))
    graph = dec_piece == "decoder_gqa" and provider == "cuda" and not cfg.extra.get("no_cuda_graph", False)
    sessions = {
        name: TimedSession(open_session(m.piece_path(name), opts), name, calls)
        for name in m.pieces
        if not name.startswith("decoder")
    }
    dec_opts = dataclasses.replace(opts, cuda_graph=graph)
    sessions["decoder"] = TimedSession(open_session(m.piece_path(dec_piece), dec_opts), "decoder", calls)
    facts = facts_of(m)  # the same numbers hulurt.load() gives its Generator
    gen = Generator(sessions, facts, cuda_graph=graph)  # type: ignore[arg-type]
    tok_path = m.file_path(m.tokenizer.tokenizer)
    tok: Any = Tok(tok_path) if tok_path is not None and tok_path.is_file() else ByteIds()
    load_s = time.perf_counter() - t0
    rss_after = MemorySampler()._rss()
    reduction = dataclasses.asdict(m.reduction)

    def once() -> RunRecord:
        calls.clear()
        clock = StageClock()
        start = time.perf_counter()
        req = prepare_request(cfg, tok, m.tokens.image, reduction, clock, media)
        visuals = tuple(VisualFeed(v.patches, v.grid_hw, v.merge, v.keep) for v in req.visuals)
        g = gen.generate(
            PromptFeed(req.ids_kept, visuals),
            tok,
            max_new_tokens=cfg.max_new_tokens,
            sampling=SamplingConfig(),
            stop_ids=(),
            started=start,
        )
        g.result()
        end = time.perf_counter()
        tm = g.timings
        assert tm is not None
        embeds = [s for p, s in calls if p == "embed"]
        first_embed = embeds[0] if embeds else 0.0
        stages = {
            "preprocess": clock.t.get("preprocess", 0.0),
            "reduction": clock.t.get("reduction", 0.0),
            "vision": sum(s for p, s in calls if p == "vision"),
            "embed": first_embed,
            "prefill": tm.prefill_s - first_embed,
            "ttft": tm.ttft_s,
            "decode": tm.decode_s,
            "e2e": end - start,
        }
        return RunRecord(
            stages,
            tm.decode_steps,
            tm.new_tokens,
            tm.prompt_tokens,
            tm.visual_tokens_before,
            tm.visual_tokens_after,
            tuple(g.token_ids),
        )

    pb = {"embed": piece_weight_bytes(m.piece_path("embed")), "decoder": piece_weight_bytes(m.piece_path(dec_piece))}
    act = np.dtype(m.dims.act_dtype).itemsize
    embed_row = pb.get("embed", 0) // max(m.dims.vocab, 1)  # decoding gathers one row of the table
    prov = getattr(sessions["decoder"], "provider", "?")
    return PreparedSide(
        name="runtime",
        description=f"hulurt Generator on onnxruntime ({prov}), {m.dims.act_dtype}, {dec_piece}"
        + (", CUDA graph" if graph else ""),
        load_s=load_s,
        once=once,
        weights_read_per_token_bytes=pb.get("decoder", 0) + embed_row,
        kv_bytes_per_token=2 * m.dims.layers * m.dims.kv_heads * m.dims.head_dim * act,
        rss_before_load=rss_before,
        rss_after_load=rss_after,
        close=sessions.clear,
    )
