"""`huluexport quantize --format qdq`: the decoder's matrices as blocked int4 weights behind DequantizeLinear, the
weight-only int4 form TensorRT builds (and onnxruntime runs, for the parity checks).

    before:  A [M, K] -> MatMul <- W [K, N]                 (lm_head: Gemm(transB=1) <- W [N, K])
    after:   A [M, K] -> MatMul <- DequantizeLinear(axis=0, block_size=B) <- W_q [K, N] INT4, scale [K/B, N]

Round to nearest, symmetric, no zero points (TensorRT's int4 weight-only path takes none): per block of B input
features of one output column, scale = max|w| / 7 in the bundle's activation dtype, W_q = clip(round(w/scale),
-8, 7). Opset 21 (INT4 tensors and block_size on DequantizeLinear). Which matrices: every MatMul/Gemm of the
decoder with a constant 2-D weight used once (quantize.matmul_weight: 7 per layer + the lm_head); the token
embedding table lives in the embed piece and stays at the bundle's precision. `huluexport plan --precision
int4-qdq` models exactly this (huluexport/plan.py, tests/export/test_qdq.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from hulurt import manifest as rt
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from huluexport import progress
from huluexport.errors import ConfigError, ExportError
from huluexport.export.pipeline import INLINE_BYTES

log = logging.getLogger(__name__)

BLOCK_SIZES = (32, 64, 128)
DEFAULT_BLOCK = 128
OPSET = 21
QMIN, QMAX = -8, 7


def describe(block_size: int, act_dtype: str) -> str:
    return (
        f"int4-weight-only (QDQ: INT4 weights + DequantizeLinear, block {block_size} along the input dim, "
        f"symmetric, no zero points, {act_dtype} scales), activations {act_dtype}"
    )


def quantize_matrix(
    w: np.ndarray, block: int, name: str, scale_dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] float -> (int8 values in [-8, 7] of shape [K, N], scales [K/block, N] in `scale_dtype`). The
    values are rounded against the scale as stored (fp16 in fp16 bundles), so the graph dequantizes to the
    nearest level of what it holds."""
    k, n = w.shape
    if k % block:
        raise ConfigError(
            f"{name}: input dim {k} is not a multiple of --block-size {block}; choose a block size dividing {k}"
        )
    blocks = w.reshape(k // block, block, n)
    amax = np.abs(blocks).max(axis=1)  # [K/B, N]
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(scale_dtype)
    q = np.clip(np.rint(blocks / scale.astype(np.float32)[:, None, :]), QMIN, QMAX).astype(np.int8)
    return q.reshape(k, n), scale


def pack_int4(q: np.ndarray) -> bytes:
    """int8 values in [-8, 7] -> ONNX INT4 bytes: two per byte, the first in the low nibble."""
    flat = q.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def quantize_streamed(
    w: np.ndarray, transposed: bool, block: int, name: str, scale_dtype: np.dtype | type, rows_per_step: int = 256
) -> tuple[onnx.TensorProto, np.ndarray]:
    """quantize_matrix + int4_tensor without a float32 copy of the whole matrix: `w` is the stored weight ([K, N],
    or [N, K] when `transposed`) in its own dtype; `rows_per_step` input rows (whole blocks) are quantized and
    packed at a time, in the row-major order of W [K, N]. The 7B lm_head (152064 x 3584) peaks at the fp16
    source + the packed int4 bytes + ~160 MB, instead of ~4 float32 copies (8.7 GB)."""
    k = w.shape[1] if transposed else w.shape[0]
    n = w.shape[0] if transposed else w.shape[1]
    if k % block:
        raise ConfigError(
            f"{name}: input dim {k} is not a multiple of --block-size {block}; choose a block size dividing {k}"
        )
    step = max(block, rows_per_step // block * block)
    raw: list[bytes] = []
    scales = np.empty((k // block, n), dtype=scale_dtype)
    for k0 in range(0, k, step):
        k1 = min(k, k0 + step)
        chunk = (w[:, k0:k1].T if transposed else w[k0:k1]).astype(np.float32)  # [rows, N]
        q, s = quantize_matrix(chunk, block, name, scale_dtype)
        raw.append(pack_int4(q))
        scales[k0 // block : k1 // block] = s
    t = onnx.TensorProto()
    t.data_type = onnx.TensorProto.INT4
    t.dims.extend((k, n))
    t.raw_data = b"".join(raw)
    return t, scales


def int4_tensor(q: np.ndarray, name: str) -> onnx.TensorProto:
    """An INT4 initializer: two values per byte, the first in the low nibble (ONNX's packing)."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = onnx.TensorProto.INT4
    t.dims.extend(q.shape)
    t.raw_data = pack_int4(q)
    return t


def dequantize(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """The float matrix DequantizeLinear computes (tests and the error report)."""
    k, n = q.shape
    return (q.reshape(k // block, block, n).astype(np.float32) * scale[:, None, :]).reshape(k, n)


def quantize_graph(model: onnx.ModelProto, base_dir: Path, block: int) -> tuple[onnx.ModelProto, int]:
    """Rewrite every candidate matmul (see the module docstring); returns the model and how many were rewritten.
    Weights are read one matrix at a time from the external data file."""
    from huluexport.export.quantize import (
        count_candidates,
        initializers_and_uses,
        matmul_weight,
        read_weight,
    )

    graph = model.graph
    inits, uses = initializers_and_uses(graph)
    step = count_candidates(graph, inits, uses)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    consumed: set[str] = set()
    for node in graph.node:
        transposed = matmul_weight(node, inits, uses)
        if transposed is None:
            new_nodes.append(node)
            continue
        w = inits[node.input[1]]
        step.note(w.name)
        arr = read_weight(w, base_dir)  # Gemm(transB=1) holds [N, K]
        qname, sname, dname = f"{w.name}_int4", f"{w.name}_scale", f"{w.name}_dq"
        packed, scale = quantize_streamed(arr, bool(transposed), block, w.name, arr.dtype)
        del arr
        packed.name = qname
        new_inits += [packed, onnx.numpy_helper.from_array(scale, sname)]
        new_nodes.append(
            onnx.helper.make_node("DequantizeLinear", [qname, sname], [dname], name=f"{node.name}_dq", axis=0,
                                  block_size=block)
        )
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], dname], list(node.output), name=node.name))
        consumed.add(w.name)
        step.advance()
    replace_weights(graph, new_nodes, new_inits, consumed, base_dir)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < OPSET:
            o.version = OPSET
    return model, len(consumed)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Blocked int4 DequantizeLinear nodes and MatMul/Gemm still holding a float constant weight."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {"DequantizeLinear(int4)": 0, "MatMul(const weight)": 0, "Gemm(const weight)": 0}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None:
            out["DequantizeLinear(int4)"] += inits[n.input[0]].data_type == onnx.TensorProto.INT4
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            out[f"{n.op_type}(const weight)"] += 1
    return out


def quantize_piece(src: Path, dst: Path, entry: rt.PieceEntry, block: int) -> dict[str, Any]:
    """src/entry.file -> dst/entry.file (+ .data) with the QDQ int4 rewrite; same return shape as
    quantize.quantize_piece."""
    t0 = time.perf_counter()
    path = src / entry.file
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise ExportError(f"{path}: cannot load the graph ({exc})") from None
    try:
        with progress.phase(f"{entry.file}: quantize to int4 (QDQ)", unit="matrices"):
            model, rewritten = quantize_graph(model, src, block)
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{path}: cannot read its external weights ({exc}); check the bundle with `huluexport inspect`"
        ) from None
    if rewritten == 0:
        raise ExportError(f"{path}: no MatMul with a constant weight was quantized; is this a huluexport graph?")
    data = f"{entry.file}.data"
    q_bytes = save_piece(model, dst, entry.file, data)
    seconds = time.perf_counter() - t0
    log.info("quantize qdq: %s: %d matrices -> int4 block %d, %.2f GB (%.1f s)", entry.file, rewritten, block,
             q_bytes / 1e9, seconds)
    return {"ops": count_ops(model), "rewritten": rewritten, "seconds": seconds, "data": data if q_bytes else None}


def replace_weights(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], consumed: set[str],
    base_dir: Path,
) -> None:
    """Swap in the rewritten nodes and quantized initializers; the float weights in `consumed` go, every other
    initializer is kept with its external data loaded (norms, biases, tables: small), so the output is self-contained
    before it is saved next to new data."""
    kept = [t for t in graph.initializer if t.name not in consumed]
    for t in kept:
        if uses_external_data(t):
            load_external_data_for_tensor(t, str(base_dir))
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + inits)


def save_piece(model: onnx.ModelProto, dst: Path, file: str, data: str) -> int:
    """Save a quantized piece with its weights in `data` (a progress phase); returns the data file's bytes."""
    with progress.phase(f"{file}: save", unit="B") as step:
        onnx.save_model(model, str(dst / file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=INLINE_BYTES)
        for f in (dst / file, dst / data):
            if f.exists():
                f.chmod(0o644)  # onnx writes external data 0600
        q_bytes = (dst / data).stat().st_size if (dst / data).exists() else 0
        step.advance(q_bytes)  # onnx reports nothing while it writes: the amount for the summary
    return q_bytes
