"""The runtime side: the product itself. `hulurt.load` opens the bundle with hulurt's backend factory,
`Model.prepare_media` preprocesses the request (token reduction per the bundle's manifest) and `Model.run`
generates; the stage seconds come from the runtime's own clock (hulurt.clock, `Timings.stages`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from huluexport.bench.config import BenchConfig
from huluexport.bench.inputs import ByteIds
from huluexport.bench.measure import MemorySampler, PreparedSide, RunRecord


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


def open_model(cfg: BenchConfig, m: Any, *, sessions: bool = True) -> Any:
    """The bundle as hulurt opens it (a byte-level tokenizer where the bundle has none: random-weight builds).
    sessions=False: no graph opened (the reference side only borrows the input code)."""
    from hulurt.api import Model, load
    from hulurt.backends.base import BackendOptions

    tok = None if m.tokenizer.tokenizer is not None else ByteIds()
    provider = cfg.extra.get("provider", "auto")
    if not sessions:
        return Model(m, BackendOptions(provider=provider, threads=cfg.threads or 0), tokenizer=tok)
    # the decoder form hulurt.load chooses for the provider (gqa-static on CUDA), unless --decoder-form forces one
    return load(cfg.bundle, provider=provider, threads=cfg.threads or 0, verify_hashes=False, tokenizer=tok,
                decoder_form=cfg.extra.get("decoder_form"),
                cuda_graph=False if cfg.extra.get("no_cuda_graph") else None,
                device_rows=False if cfg.extra.get("host_rows") else None)


def prepare_runtime(cfg: BenchConfig, m: Any, media: list[Any]) -> PreparedSide:
    from hulurt.sampling import SamplingConfig

    rss_before = MemorySampler()._rss()
    t0 = time.perf_counter()
    model = open_model(cfg, m)
    load_s = time.perf_counter() - t0
    rss_after = MemorySampler()._rss()
    holder = {"model": model}

    def once() -> RunRecord:
        model = holder["model"]  # close() drops it: the sessions are freed before a sequential reference
        start = time.perf_counter()
        feed = model.prepare_media(cfg.prompt, media)
        g = model.run(
            feed, max_new_tokens=cfg.max_new_tokens, sampling=SamplingConfig(), stop_ids=(), started=start
        ).result()
        end = time.perf_counter()
        tm = g.timings
        assert tm is not None
        st = tm.stages
        stages = {k: st.get(k, 0.0) for k in ("preprocess", "reduction", "vision", "embed", "prefill")}
        stages.update(ttft=tm.ttft_s, decode=tm.decode_s, e2e=end - start)
        return RunRecord(
            stages,
            tm.decode_steps,
            tm.new_tokens,
            tm.prompt_tokens,
            tm.visual_tokens_before,
            tm.visual_tokens_after,
            tuple(g.token_ids),
        )

    def trace(n: int) -> tuple[list[int], list[np.ndarray]]:
        rows: list[np.ndarray] = []
        feed = holder["model"].prepare_media(cfg.prompt, media)
        g = holder["model"].run(feed, max_new_tokens=n, sampling=SamplingConfig(), stop_ids=(),
                                on_logits=lambda r: rows.append(np.array(r, dtype=np.float32).reshape(-1))).result()
        return list(g.token_ids), rows

    dec_piece = model.decoder_piece  # "decoder" or "decoder_gqa": the graph whose weights a step reads
    pb = {"embed": piece_weight_bytes(m.piece_path("embed")), "decoder": piece_weight_bytes(m.piece_path(dec_piece))}
    act = np.dtype(m.dims.act_dtype).itemsize
    embed_row = pb.get("embed", 0) // max(m.dims.vocab, 1)  # decoding gathers one row of the table
    prov = model.provider
    weights = m.pieces[dec_piece].precision  # "int4"/"int8" after `huluexport quantize`
    dec_desc = dec_piece + (f" ({weights} weights)" if weights != m.precision else "")

    def describe(mdl: Any) -> str:  # after the runs too: a capture that fails in a run drops the CUDA graph
        return (f"hulurt.load + Model.run on onnxruntime ({prov}), {m.dims.act_dtype}, {dec_desc}"
                + (", CUDA graph" if mdl.uses_cuda_graph else "")
                + (", visual rows on the device" if media and mdl.rows_on_device else ""))

    loaded = describe(model)
    return PreparedSide(
        name="runtime",
        description=loaded,
        # the model through the holder, never held here: close() must free it
        describe=lambda: describe(holder["model"]) if "model" in holder else loaded,
        load_s=load_s,
        once=once,
        weights_read_per_token_bytes=pb.get("decoder", 0) + embed_row,
        kv_bytes_per_token=2 * m.dims.layers * m.dims.kv_heads * m.dims.head_dim * act,
        rss_before_load=rss_before,
        rss_after_load=rss_after,
        close=holder.clear,
        trace=trace,
    )
