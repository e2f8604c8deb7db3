"""`huluexport bench`: load the sides, measure them, and build the report with the planner's check."""

from __future__ import annotations

import logging
from typing import Any

from huluexport.bench.config import BenchConfig
from huluexport.bench.greedy_check import greedy_check
from huluexport.bench.inputs import request_media
from huluexport.bench.measure import SideResult, measure_sides
from huluexport.bench.reference_side import prepare_reference
from huluexport.bench.report import build_report
from huluexport.bench.runtime_side import bundle_info, prepare_runtime

log = logging.getLogger(__name__)
DEFAULT_CHECK_STEPS = 32  # greedy-check steps with --compare-reference (capped at --max-new-tokens)


# Planner check and the entry point


def plan_check(m: Any, info: dict[str, Any], runtime: SideResult) -> dict[str, Any]:
    """Planned weight bytes (huluexport.plan) vs the bundle's graphs and files; planned memory vs RSS."""
    from huluexport.export.pipeline import config_from_dict
    from huluexport.plan import weight_bytes

    cfg = config_from_dict({k: v for k, v in m.model.items() if k != "weights"})
    wb = weight_bytes(cfg, m.precision)
    pb, pw = info["piece_bytes"], info["piece_weight_bytes"]
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, planned: float, measured: float) -> None:
        rows[name] = {
            "planned": int(planned),
            "measured": int(measured),
            "ratio": float(measured / planned) if planned else float("nan"),
        }

    add("vision piece initializers (vision + projector)", wb.vision + wb.projector, pw.get("vision", 0))
    add("embed + decoder initializers (decoder)", wb.decoder, pw.get("embed", 0) + pw.get("decoder", 0))
    add(
        "decoder weights read per decoded token",
        wb.read_per_decoded_token,
        pw.get("decoder", 0) + pw.get("embed", 0) // max(cfg.decoder.vocab, 1),
    )
    add("bundle files on disk (graphs + weights)", wb.total, sum(pb.values()))
    mem = runtime.memory
    last = runtime.records[-1]
    kv = runtime.kv_bytes_per_token * (last.prompt_tokens + last.new_tokens)
    add(
        "runtime RSS growth (load + largest run) vs planned weights + KV",
        wb.total + kv,
        mem["load_growth_bytes"] + mem["run_growth_bytes"],
    )
    return {
        "precision": m.precision,
        "rows": rows,
        "note": "Planned = huluexport.plan.weight_bytes of the bundle's (sliced) config at its precision; "
        "initializer bytes are read from the ONNX graphs (external data lengths). Disk sizes add the graph "
        "protobufs. RSS growth = RSS after opening the sessions minus before, plus the largest rise of RSS "
        "during one timed run (activations, KV, arenas). onnxruntime memory-maps external weight files, so "
        "weights that a request never touches (most rows of the embedding table) need not be resident.",
    }


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the runtime (and optionally the reference) on one request; return the report dict.

    With --compare-reference both sides are loaded and their runs alternate (interleaved, the default), or,
    with `sequential`, the runtime is measured and closed before the reference is loaded (half the memory)."""
    import gc

    from huluexport.devices import device

    m, info = bundle_info(cfg.bundle)
    media = request_media(cfg)
    sequential = bool(cfg.extra.get("sequential", False))
    log.info("bench: loading the runtime for %s", cfg.bundle)
    rt_side = prepare_runtime(cfg, m, media)
    ref = None
    # the greedy check (huluexport/bench/greedy_check.py): one more untimed run per side, logits kept
    steps = min(cfg.max_new_tokens, int(cfg.extra.get("check_steps", DEFAULT_CHECK_STEPS))) \
        if cfg.compare_reference else 0
    traces: dict[str, tuple[list[int], list[Any]]] = {}

    def trace(side: Any) -> None:
        if steps > 0 and side.trace is not None:
            log.info("bench: greedy check, %s: %d steps with logits", side.name, steps)
            traces[side.name] = side.trace(steps)

    if cfg.compare_reference and not sequential:
        log.info("bench: loading the PyTorch reference (interleaved runs)")
        ref_side = prepare_reference(cfg, m, media)
        res = measure_sides([rt_side, ref_side], cfg.warmup, cfg.repeats)
        rt, ref = res["runtime"], res["reference"]
        trace(rt_side)
        trace(ref_side)
        ref_side.close()
    else:
        rt = measure_sides([rt_side], cfg.warmup, cfg.repeats)["runtime"]
        if cfg.compare_reference:
            trace(rt_side)
            rt_side.close()
            gc.collect()
            log.info("bench: loading the PyTorch reference (sequential runs)")
            ref_side = prepare_reference(cfg, m, media)
            ref = measure_sides([ref_side], cfg.warmup, cfg.repeats)["reference"]
            trace(ref_side)
            ref_side.close()
    check = None
    if len(traces) == 2:
        check = greedy_check(*traces["runtime"], *traces["reference"])
        log.info("bench: %s", check["summary"])
    dev = device(cfg.target)  # targets without a fixed device: this host, bandwidth probed now
    bw = dev.bandwidth_bytes_s
    inputs = {
        "preset": "files" if cfg.media_files else cfg.preset,
        "frames": cfg.frames if cfg.preset in ("volume", "video") else (1 if cfg.preset == "image" else 0),
        "resolution": cfg.resolution,
        "files": [str(p) for p in cfg.media_files],
        "prompt": cfg.prompt,
        "max_new_tokens": cfg.max_new_tokens,
        "stop_ids": "none (every run decodes exactly max_new_tokens on both sides)",
    }
    settings = {
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "threads": cfg.threads,
        "order": "sequential" if sequential or ref is None else "interleaved (runtime, reference, ...)",
        "target": cfg.target,
        "bandwidth_source": dev.sources["bandwidth_bytes_s"],
    }
    return build_report(
        runtime=rt,
        reference=ref,
        bandwidth_bytes_s=bw,
        bundle=info,
        inputs=inputs,
        settings=settings,
        plan_check=plan_check(m, info, rt),
        greedy=check,
    )
