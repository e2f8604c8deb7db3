"""`plan`: will this model, precision and input fit this device? Memory, the largest context and volume that
fit, decode and time-to-first-token bounds. Latencies are bounds or estimates from peak figures, never
measurements (that is `huluexport bench`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from huluexport.config import HuluConfig, preset
from huluexport.devices import DeviceProfile, device
from huluexport.errors import ConfigError
from huluexport.plan.cost import (
    QUANT_POLICY,
    WeightBytes,
    compute_precision,
    prefill_activation_bytes,
    prefill_flops,
    vision_activation_bytes,
    vision_flops,
    weight_bytes,
)
from huluexport.plan.inputs import InputSpec, VisualLoad, visual_load


@dataclass(frozen=True)
class Plan:
    size: str
    target: str
    device_name: str
    precision: str
    compute_precision: str
    supported: bool
    input: dict[str, Any]
    visual_tokens: int
    resized_hw: tuple[int, int]
    prompt_tokens: int  # text + visual tokens of the prompt
    context_tokens: int  # prompt + max_new_tokens
    usable_bytes: int
    memory: dict[str, int]  # weights, kv_cache, activations, workspace, total
    weights: dict[str, int]
    kv_bytes_per_token: int
    fits: bool
    margin_bytes: int
    largest_context_tokens: int
    largest_volume_slices: int  # most slices at 512x512 that fit (0 = none), up to the search limit
    volume_slices_all_fit_up_to: int  # every slice count 1..this fits
    largest_volume_search_limit: int
    decode_tok_s_bound_first: float
    decode_tok_s_bound_last: float
    ttft_estimate_s: float
    ttft_parts_s: dict[str, float]
    fused_attention: bool
    vision_batch_frames: int | None
    prefill_chunk_tokens: int | None
    attention_scores_unfused_bytes: int
    notes: tuple[str, ...]
    sources: dict[str, str]
    estimates: tuple[str, ...]
    device: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": "huluexport.plan/1", **asdict(self)}


VOLUME_SEARCH_LIMIT = 2048


@dataclass(frozen=True)
class Schedule:
    """How the runtime feeds the pieces: all frames of an input in one vision call and the whole prompt in one
    prefill (None, what the contract's single calls do), or in chunks (exact: attention is per frame, and a
    chunked prefill appends to the KV cache)."""

    fused_attention: bool = True
    vision_batch_frames: int | None = None
    prefill_chunk_tokens: int | None = None


def resident_weight_bytes(wb: WeightBytes, dev: DeviceProfile, tokens: int) -> int:
    """Weights in memory while a request runs. A GPU holds every weight. On a CPU host (a measured profile)
    onnxruntime maps the external weight files, and only the embedding rows a request reads become resident:
    at most one row per token (measured: RSS after loading the 7B-width 2-layer fp32 slice is the weights less
    the table, benchmarks/results/volume_160.md)."""
    if not dev.measured:
        return wb.total
    return wb.total - wb.embed_tokens + min(wb.embed_tokens, tokens * wb.embed_row)


def kv_value_bytes(act_bytes: int) -> int:
    """An fp32 build keeps its KV cache in fp32 (the decoder's activation dtype); every other precision in fp16
    (QUANT_POLICY)."""
    return 4 if act_bytes == 4 else 2


def _memory(
    cfg: HuluConfig, dev: DeviceProfile, inp: InputSpec, wb: WeightBytes, sched: Schedule, act_bytes: int
) -> tuple[dict[str, int], VisualLoad, int, dict[str, int], dict[str, int]]:
    vl = visual_load(cfg, inp)
    kept = math.ceil(vl.tokens * inp.kept_fraction)  # rows that reach the prompt after token reduction
    prompt = inp.prompt_tokens + inp.separator_tokens() + kept
    ctx = prompt + inp.max_new_tokens
    kv = cfg.decoder.kv_bytes_per_token(kv_value_bytes(act_bytes)) * ctx
    # the request's preprocessed patches (fp32, every frame) stay alive through vision and prefill
    patches = vl.frames * vl.patches_per_frame * cfg.vision.patch_dim * 4
    fused = sched.fused_attention
    vb = vl.frames if sched.vision_batch_frames is None else min(vl.frames, sched.vision_batch_frames)
    va = vision_activation_bytes(cfg, replace(vl, frames=vb), act_bytes, fused)
    out_rows = kept * cfg.decoder.hidden * act_bytes  # the kept rows of every frame stay until embed
    va = {**va, "total": va["total"] - vb * vl.tokens_per_frame * cfg.decoder.hidden * act_bytes + out_rows}
    embeds = prompt * cfg.decoder.hidden * act_bytes  # the whole prompt's embeddings, sliced into chunks
    chunk = prompt if sched.prefill_chunk_tokens is None else min(prompt, sched.prefill_chunk_tokens)
    # the last chunk is the largest: its queries see every earlier key
    pa = prefill_activation_bytes(cfg, chunk, act_bytes, fused, past=prompt - chunk)
    # vision runs before prefill, and the runtime's vision session hands its arena back after every batch
    # (runtime/hulurt/backends/ort.py, release_after_run): its kept rows (counted in va) are all that outlives it
    acts = max(va["total"], pa["total"] + out_rows + embeds)
    mem = {"weights": resident_weight_bytes(wb, dev, ctx), "kv_cache": kv, "inputs": patches, "activations": acts,
           "workspace": dev.workspace_bytes}
    mem["total"] = sum(mem.values())
    return mem, vl, prompt, va, pa


def plan(
    size: str | HuluConfig,
    target: str | DeviceProfile,
    precision: str,
    inp: InputSpec | None = None,
    *,
    fused_attention: bool | None = None,
    vision_batch_frames: int | None = None,
    prefill_chunk_tokens: int | None = None,
    search_volume: bool = True,
) -> Plan:
    cfg = preset(size) if isinstance(size, str) else size
    dev = device(target) if isinstance(target, str) else target
    inp = inp or InputSpec()
    if inp.max_new_tokens < 0 or inp.prompt_tokens < 0:
        raise ConfigError(
            f"--max-new-tokens and prompt tokens must be >= 0; got {inp.max_new_tokens}, {inp.prompt_tokens}"
        )
    wb = weight_bytes(cfg, precision)
    # a CPU host (measured profile) runs the unfused attention of the ONNX graphs; GPU engines fuse it
    fused = (not dev.measured) if fused_attention is None else fused_attention
    for name, val in (("--vision-batch", vision_batch_frames), ("--prefill-chunk", prefill_chunk_tokens)):
        if val is not None and val < 1:
            raise ConfigError(f"{name} must be >= 1; got {val}")
    sched = Schedule(fused, vision_batch_frames, prefill_chunk_tokens)
    act_bytes = 4 if precision == "fp32" else 2
    mem, vl, prompt, va, pa = _memory(cfg, dev, inp, wb, sched, act_bytes)
    usable = dev.usable_bytes
    fits = mem["total"] <= usable
    notes: list[str] = [QUANT_POLICY]
    supported = dev.supports(precision)
    if not supported:
        notes.append(
            f"{precision} is not supported by {dev.name} (native: {', '.join(dev.native_precisions)}); "
            "an engine at this precision cannot be built there"
        )
    cp = compute_precision(dev, precision)
    if precision in ("int8", "fp8") and cp != precision:
        notes.append(
            f"{precision} weights on {dev.key}: no native {precision} tensor math, planned as "
            f"{cp} math on dequantized weights"
        )
    ctx = prompt + inp.max_new_tokens
    if ctx > cfg.decoder.max_position:
        notes.append(f"context {ctx} exceeds the model's max_position {cfg.decoder.max_position}")

    # largest context of a text-only request: KV grows with every token, prefill activations with the chunk
    kv_tok = cfg.decoder.kv_bytes_per_token(kv_value_bytes(act_bytes))
    lo, hi = 0, cfg.decoder.max_position
    while lo < hi:
        mid = (lo + hi + 1) // 2
        txt = InputSpec(prompt_tokens=mid, max_new_tokens=0)
        if _memory(cfg, dev, txt, wb, sched, act_bytes)[0]["total"] <= usable:
            lo = mid
        else:
            hi = mid - 1
    largest_ctx = lo

    # volumes: token count is not monotone in the slice count (the shared budget is floored per frame), so
    # scan every count and report both the largest that fits and the count up to which all fit
    largest_vol, all_fit_to = 0, 0
    if search_volume:
        for n in range(1, VOLUME_SEARCH_LIMIT + 1):
            vol = replace(inp, kind="volume", frames=n, height=512, width=512)
            if _memory(cfg, dev, vol, wb, sched, act_bytes)[0]["total"] <= usable:
                largest_vol = n
                all_fit_to = n if all_fit_to == n - 1 else all_fit_to

    # decode bound: bytes streamed per token = weights read + KV at the current length
    bw = dev.bandwidth_bytes_s
    first = bw / (wb.read_per_decoded_token + kv_tok * prompt)
    last = bw / (wb.read_per_decoded_token + kv_tok * ctx)
    peak = dev.peak_ops[cp]
    vis_t = max(vision_flops(cfg, vl) / peak, (wb.vision + wb.projector) / bw) if vl.frames else 0.0
    pre_t = max(prefill_flops(cfg, prompt) / peak, wb.read_per_decoded_token / bw)
    parts = {"vision": vis_t, "prefill": pre_t}

    return Plan(
        size=cfg.name,
        target=dev.key,
        device_name=dev.name,
        precision=precision,
        compute_precision=cp,
        supported=supported,
        input=asdict(inp),
        visual_tokens=vl.tokens,
        resized_hw=vl.resized,
        prompt_tokens=prompt,
        context_tokens=ctx,
        usable_bytes=usable,
        memory=mem,
        weights={
            "vision": wb.vision,
            "projector": wb.projector,
            "decoder": wb.decoder,
            "total": wb.total,
            "read_per_decoded_token": wb.read_per_decoded_token,
        },
        kv_bytes_per_token=kv_tok,
        fits=fits and supported,
        margin_bytes=usable - mem["total"],
        largest_context_tokens=int(largest_ctx),
        largest_volume_slices=largest_vol,
        volume_slices_all_fit_up_to=all_fit_to,
        largest_volume_search_limit=VOLUME_SEARCH_LIMIT,
        decode_tok_s_bound_first=first,
        decode_tok_s_bound_last=last,
        ttft_estimate_s=vis_t + pre_t,
        ttft_parts_s=parts,
        fused_attention=fused,
        vision_batch_frames=vision_batch_frames,
        prefill_chunk_tokens=prefill_chunk_tokens,
        attention_scores_unfused_bytes=max(va["attention_scores_unfused"], pa["attention_scores_unfused"]),
        notes=tuple(notes),
        sources=dict(dev.sources),
        estimates=dev.estimates,
        device={
            "memory_bytes": dev.memory_bytes,
            "usable_fraction": dev.usable_fraction,
            "bandwidth_bytes_s": dev.bandwidth_bytes_s,
            "peak_ops": dict(dev.peak_ops),
            "native_precisions": list(dev.native_precisions),
            "unified_memory": dev.unified_memory,
            "measured": dev.measured,
        },
    )
