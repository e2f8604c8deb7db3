"""Ranges of every number in a bundle's manifest, checked by hulurt.manifest.load_manifest before anything is
sized from them (KV cache, token budgets, tables). A manifest is input like any file: a value outside these
ranges is refused with one line naming the field, never allocated.

The caps are sanity limits, far above every Hulu-Med / Qwen2.5 / Qwen3 size the exporter knows
(huluexport/config.py presets: the largest has hidden 5120, vocab 151936, 64 layers, max_position 262144) and
far below what would exhaust a machine. Each says why it is where it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from hulurt.contract import DYNAMIC_DIMS, DimRange, Dims
from hulurt.errors import ManifestError

Fail = Callable[[str, str], ManifestError]

# Model widths: the widest known decoders are ~16k (hidden) and ~256k (vocab); 4x headroom, and a single
# [vocab, hidden] fp32 table at the caps is still below 2^40 bytes only because both are capped.
MAX_HIDDEN = 1 << 16
MAX_VOCAB = 1 << 20
# Decoder layers: the deepest released LLMs have ~128.
MAX_LAYERS = 1024
# Attention heads and head sizes: every known model has <= 128 heads of <= 256 dims.
MAX_HEADS = 1024
MAX_HEAD_DIM = 1024
# Context (prompt + generated tokens): 4x the longest max_position_embeddings of the presets (262144). The KV
# cache is sized from it (per token 2 * layers * kv_heads * head_dim * bytes: 57 KB for 7B fp16, so 60 GB at
# the cap) and the token budget checks compare against it.
MAX_CONTEXT = 1 << 20
# Frames per vision call and per request: upstream samples at most 180 frames; 16384 frames of a CT series is
# far beyond any scanner's slice count.
MAX_FRAMES = 1 << 14
# Merged visual tokens per frame (n_groups) and per input (preprocess.max_tokens): the processor's budget is
# 16384; 64x headroom.
MAX_VISUAL_TOKENS = 1 << 20
# ViT patch side in pixels (Hulu-Med: 14) and the spatial merge factor: merge_group = m*m is at most 4 in
# contract v1 (hulurt/contract.py dim_ranges), so m is 1 or 2.
MAX_PATCH = 64
MERGES = (1, 2)
# Video sampling rate (frames per second of source video); 1 in Hulu-Med, 60 covers any recording.
MAX_FPS = 60.0
# A listed file's size: 4 TiB is beyond any bundle (32B fp32 is ~130 GB).
MAX_FILE_BYTES = 1 << 42
MAX_OPSET = 100
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _within(fail: Fail, field: str, value: float, lo: float, hi: float, why: str = "") -> None:
    if not lo <= value <= hi:
        raise fail(field, f"expected {lo}..{hi}{why}, found {value}")


def check_dims(fail: Fail, d: Dims) -> None:
    """The model's static sizes (run before hulurt.contract.pieces() builds the per-layer tensor names)."""
    _within(fail, "dims.hidden", d.hidden, 1, MAX_HIDDEN)
    _within(fail, "dims.vocab", d.vocab, 1, MAX_VOCAB)
    _within(fail, "dims.layers", d.layers, 1, MAX_LAYERS)
    _within(fail, "dims.kv_heads", d.kv_heads, 1, MAX_HEADS)
    _within(fail, "dims.head_dim", d.head_dim, 1, MAX_HEAD_DIM)
    _within(fail, "dims.vision_head_dim", d.vision_head_dim, 2, MAX_HEAD_DIM)
    if d.vision_head_dim % 2:
        raise fail("dims.vision_head_dim", f"expected an even size (2-D RoPE rotates pairs), found {d.vision_head_dim}")
    _within(fail, "dims.patch_dim", d.patch_dim, 3, 3 * MAX_PATCH * MAX_PATCH)


def check_ranges(fail: Fail, ranges: dict[str, DimRange]) -> None:
    """dim_ranges: exactly the contract's dynamic dims, within the caps and consistent with each other."""
    missing = [k for k in DYNAMIC_DIMS if k not in ranges]
    if missing:
        raise fail(f"dim_ranges.{missing[0]}", f"missing; contract v1 needs a range for each of {list(DYNAMIC_DIMS)}")
    unknown = sorted(set(ranges) - set(DYNAMIC_DIMS))
    if unknown:
        raise fail(f"dim_ranges.{unknown[0]}", f"unknown dim (contract v1 has {list(DYNAMIC_DIMS)})")
    caps = {
        "n_frames": MAX_FRAMES, "n_groups": MAX_VISUAL_TOKENS, "merge_group": max(MERGES) ** 2,
        "n_patches": max(MERGES) ** 2 * MAX_VISUAL_TOKENS, "seq_len": MAX_CONTEXT, "n_visual": MAX_CONTEXT,
        "past_len": MAX_CONTEXT, "total_len": MAX_CONTEXT,
    }
    for name, cap in caps.items():
        _within(fail, f"dim_ranges.{name}.max", ranges[name].max, 1 if name != "past_len" else 0, cap)
    total = ranges["total_len"].max
    if ranges["past_len"].max >= total or ranges["seq_len"].max > total:
        raise fail("dim_ranges.total_len", f"max {total} must exceed past_len.max ({ranges['past_len'].max}) and "
                   f"be >= seq_len.max ({ranges['seq_len'].max})")


def check_values(fail: Fail, m: Any) -> None:
    """Every other number of a Manifest (hulurt.manifest.Manifest), against the caps and the dims."""
    d, r = m.dims, m.dim_ranges
    vocab = d.vocab
    for name in ("image", "endoftext", "im_start", "im_end", "pad"):
        _within(fail, f"tokens.{name}", getattr(m.tokens, name), 0, vocab - 1, f" (dims.vocab is {vocab})")
    if not m.tokens.eos:
        raise fail("tokens.eos", "expected at least one end-of-sequence id, found none")
    for i, t in enumerate(m.tokens.eos):
        _within(fail, f"tokens.eos[{i}]", t, 0, vocab - 1, f" (dims.vocab is {vocab})")

    from hulurt.reduction import MODES

    if m.reduction.mode not in MODES:
        raise fail("reduction.mode", f"expected one of {MODES}, found {m.reduction.mode!r}")
    _within(fail, "reduction.threshold", m.reduction.threshold, 0.0, 1e6)
    _within(fail, "reduction.min_tokens", m.reduction.min_tokens, 0, r["n_groups"].max,
            " (dim_ranges.n_groups.max)")

    v = m.vision
    _within(fail, "vision.patch", v.patch, 1, MAX_PATCH)
    if d.patch_dim != 3 * v.patch * v.patch:
        raise fail("dims.patch_dim", f"expected 3 * vision.patch^2 = {3 * v.patch * v.patch}, found {d.patch_dim}")
    for name in ("merge_image", "merge_video"):
        if getattr(v, name) not in MERGES:
            raise fail(f"vision.{name}", f"expected one of {MERGES} (merge_group = m*m <= 4 in contract v1), "
                       f"found {getattr(v, name)}")
    if not (math.isfinite(v.rope_theta) and v.rope_theta > 1.0):
        raise fail("vision.rope_theta", f"expected a finite base > 1, found {v.rope_theta}")
    if v.head_dim != d.vision_head_dim:
        raise fail("vision.head_dim", f"expected dims.vision_head_dim = {d.vision_head_dim}, found {v.head_dim}")
    _within(fail, "vision.hidden", v.hidden, 1, MAX_HIDDEN)

    p = m.preprocess
    _within(fail, "preprocess.max_tokens", p.max_tokens, 1, MAX_VISUAL_TOKENS)
    _within(fail, "preprocess.min_tokens", p.min_tokens, 1, p.max_tokens, " (preprocess.max_tokens)")
    for name in ("image_mean", "image_std"):
        vals = getattr(p, name)
        if len(vals) != 3:
            raise fail(f"preprocess.{name}", f"expected 3 values (R, G, B), found {len(vals)}")
        for x in vals:
            _within(fail, f"preprocess.{name}", x, 1e-6 if name == "image_std" else -1e3, 1e3)
    _within(fail, "preprocess.fps", p.fps, 1e-3, MAX_FPS)
    _within(fail, "preprocess.max_frames", p.max_frames, 1, MAX_FRAMES)

    lim = m.limits
    for name, dim in (("max_context", "total_len"), ("max_frames", "n_frames"), ("max_groups", "n_groups")):
        if getattr(lim, name) != r[dim].max:
            raise fail(f"limits.{name}", f"expected dim_ranges.{dim}.max = {r[dim].max}, found {getattr(lim, name)}")
    # may exceed a small target's context: the runtime clamps it to the context left (hulurt/generate.py)
    _within(fail, "limits.max_new_tokens_default", lim.max_new_tokens_default, 1, MAX_CONTEXT)

    for name, e in m.pieces.items():
        _within(fail, f"pieces.{name}.opset", e.opset, 1, MAX_OPSET)
    for rel, f in m.files.items():
        if not _SHA256.fullmatch(f.sha256):
            raise fail(f"files.{rel}.sha256", f"expected 64 lowercase hex digits, found {f.sha256[:70]!r}")
        _within(fail, f"files.{rel}.bytes", f.bytes, 0, MAX_FILE_BYTES)


# --------------------------------------------------------------------------------------------------
# The manifest's dims against the graphs' own declared inputs/outputs
# --------------------------------------------------------------------------------------------------

# ONNX element types as onnxruntime's NodeArg.type spells them -> numpy dtype names (hulurt.contract's dtypes)
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(bool)": "bool"}
# Distinct probe values: pieces(_PROBE) has the same tensors as pieces(dims) with each static size replaced by
# a number that says which dims field it came from, so a mismatch can name the field.
_PROBE = Dims(hidden=1_000_003, vocab=1_000_033, layers=1, kv_heads=1_000_037, head_dim=1_000_039,
              vision_head_dim=1_000_081, patch_dim=1_000_099)
_PROBE_FIELDS = {getattr(_PROBE, f): f for f in ("hidden", "vocab", "kv_heads", "head_dim", "vision_head_dim",
                                                   "patch_dim")}

def check_graph_io(m: Any, piece: str, inputs: list[tuple[str, str, tuple[Any, ...]]],
                   outputs: list[tuple[str, str, tuple[Any, ...]]], where: str) -> None:
    """ManifestError (naming the graph file and the manifest field) unless the graph's declared inputs and
    outputs are the contract's tensors for the manifest's dims: names (so dims.layers), dtypes, ranks and
    every static size (dims.hidden, vocab, kv_heads, head_dim, ...). Symbolic graph axes are not compared.
    `inputs` / `outputs`: (name, numpy dtype name, shape with an int, a str or None per axis), as read from an
    onnxruntime session or the ONNX file."""
    spec = m.specs()[piece]
    probe = {t.name: t for s in (_probe_spec(piece, m.dims.act_dtype),) for t in (*s.inputs, *s.outputs)}
    for role, declared, want in (("input", inputs, spec.inputs), ("output", outputs, spec.outputs)):
        names = [n for n, _, _ in declared]
        if sorted(names) != sorted(t.name for t in want):
            extra = sorted(set(names) - {t.name for t in want})
            lacking = sorted({t.name for t in want} - set(names))
            field = "dims.layers" if any(".key" in n or ".value" in n for n in extra + lacking) else f"pieces.{piece}"
            raise ManifestError(
                f"{m.path}: field {field!r}: {where} declares {len(names)} {role}s that do not match the "
                f"manifest (graph only: {extra[:2]}, manifest only: {lacking[:2]}); the manifest was edited or "
                "belongs to other graphs. Rebuild the bundle")
        by_name = {n: (dt, shape) for n, dt, shape in declared}
        for t in want:
            dtype, shape = by_name[t.name]
            if dtype != t.dtype:
                raise ManifestError(f"{m.path}: field 'dims.act_dtype': {where} {role} {t.name!r} is {dtype}, the "
                                    f"manifest implies {t.dtype}; rebuild the bundle")
            if len(shape) != len(t.shape):
                raise ManifestError(f"{m.path}: field 'pieces.{piece}': {where} {role} {t.name!r} has rank "
                                    f"{len(shape)}, contract v1 says {len(t.shape)}; rebuild the bundle")
            for axis, (got, exp) in enumerate(zip(shape, t.shape)):
                if isinstance(exp, int) and isinstance(got, int) and got != exp:
                    p = probe[re.sub(r"\.\d+\.", ".0.", t.name)].shape[axis]
                    field = f"dims.{_PROBE_FIELDS[p]}" if p in _PROBE_FIELDS else f"pieces.{piece}"
                    raise ManifestError(
                        f"{m.path}: field {field!r} is {exp}, but {where} {role} {t.name!r} axis {axis} is {got}; "
                        "the manifest does not describe these graphs. Rebuild the bundle")


def _probe_spec(piece: str, act_dtype: str) -> Any:
    from dataclasses import replace

    from hulurt.contract import pieces

    return pieces(replace(_PROBE, act_dtype=act_dtype))[piece]
