"""`huluexport quantize`: an fp32/fp16 bundle -> a bundle whose chosen pieces carry weight-only int8/int4 matmuls
(onnxruntime's own block quantizer -> com.microsoft MatMulNBits), for memory-bound decode on CPU/edge.

Memory: weights are read, quantized and written one matrix at a time (see quantize_graph): bounded by the largest
matrix, not the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from hulurt import manifest as rt
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from huluexport import progress
from huluexport.errors import ConfigError, ExportError, ManifestError
from huluexport.export.extdata import DataWriter, copy_kept, external, read_weight, write_subgraph_tensors
from huluexport.export.manifest import list_files, tool_versions, write_manifest
from huluexport.export.pipeline import INLINE_BYTES
from huluexport.export.staging import check_out, staged

log = logging.getLogger(__name__)

BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128, 256)
# Pieces whose graphs we quantize; embed's lookups read one row per token (no decode speed to gain there), and
# vision runs once per request: only the decoder forms (their layers and the lm_head) are on the per-token path.
# decoder: v1-concat (onnxruntime CPU, and TensorRT in the qdq format); decoder_gqa: the gqa-static form that
# hulurt runs on the CUDA EP (docs/gpu.md), MatMulNBits only (TensorRT cannot build GroupQueryAttention).
QUANTIZABLE = ("decoder", "decoder_gqa")
QDQ_PIECES = ("decoder",)
# onnxruntime's MatMulNBits `accuracy_level`: the minimum precision of the activation side of the product.
ACCURACY_LEVELS = {0: "fp32 (unset)", 1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}


@dataclass(frozen=True)
class QuantizeOptions:
    src: Path
    out: Path
    bits: int = 4
    block_size: int = 32
    pieces: tuple[str, ...] = ()  # () = default_pieces(): every decoder form the bundle has (qdq: decoder)
    # 4: MatMulNBits quantizes each activation block to int8 on the fly and runs integer dot products. On this
    # AVX2 CPU it is what makes the product memory-bound (7B slice decode step: int4 102 ms at 4 vs 377 ms at 0;
    # int8 119 ms vs 12.2 s at 0, where onnxruntime 1.32 dequantizes the whole matrix every call).
    accuracy_level: int = 4
    symmetric: bool = False  # False: a uint zero point per block (onnxruntime's default and better for RTN)
    overwrite: bool = False
    format: str = "matmulnbits"  # or "qdq": int4 + DequantizeLinear for TensorRT (huluexport/export/qdq.py)


def precision_name(bits: int) -> str:
    return f"int{bits}"


def describe(opts: QuantizeOptions, act_dtype: str) -> str:
    acts = act_dtype
    if opts.accuracy_level > 1:
        acts += f" (matmul inputs {ACCURACY_LEVELS[opts.accuracy_level]} per block, on the fly)"
    kind = "symmetric" if opts.symmetric else "asymmetric"
    return (
        f"int{opts.bits}-weight-only (MatMulNBits, block {opts.block_size}, {kind}, accuracy_level "
        f"{opts.accuracy_level}), activations {acts}"
    )


FORMATS = ("matmulnbits", "qdq")


def check_options(opts: QuantizeOptions) -> None:
    if opts.format not in FORMATS:
        raise ConfigError(f"--format {opts.format!r}: expected one of {', '.join(FORMATS)}")
    if opts.format == "qdq":
        from huluexport.export import qdq

        if opts.bits != 4:
            raise ConfigError(f"--bits {opts.bits} with --format qdq: the QDQ form is int4 only (--bits 4)")
        if opts.block_size not in qdq.BLOCK_SIZES:
            raise ConfigError(f"--block-size {opts.block_size} with --format qdq: expected one of {qdq.BLOCK_SIZES}")
    if opts.bits not in BITS:
        raise ConfigError(f"--bits {opts.bits}: expected one of {BITS}")
    if opts.block_size not in BLOCK_SIZES:
        raise ConfigError(
            f"--block-size {opts.block_size}: expected one of {BLOCK_SIZES} (MatMulNBits blocks)"
        )
    if opts.accuracy_level not in ACCURACY_LEVELS:
        raise ConfigError(f"accuracy_level {opts.accuracy_level}: expected one of {sorted(ACCURACY_LEVELS)}")
    for p in opts.pieces:
        if p not in QUANTIZABLE:
            raise ConfigError(f"--piece {p}: this quantizer handles {', '.join(QUANTIZABLE)}, not {p!r}")
        if opts.format == "qdq" and p not in QDQ_PIECES:
            raise ConfigError(f"--piece {p} with --format qdq: the QDQ form is for TensorRT, which cannot build "
                              f"{p}'s GroupQueryAttention; quantize {p} with --format matmulnbits")


def default_pieces(have: Iterable[str], fmt: str) -> tuple[str, ...]:
    """The pieces quantized when none are named: every decoder form of the bundle for MatMulNBits (so the
    gqa-static form hulurt runs on a GPU is quantized with v1), the v1 decoder only for qdq (TensorRT's form)."""
    return tuple(p for p in (QDQ_PIECES if fmt == "qdq" else QUANTIZABLE) if p in have)


# --------------------------------------------------------------------------------------------------
# Graph work
# --------------------------------------------------------------------------------------------------


def initializers_and_uses(graph: onnx.GraphProto) -> tuple[dict[str, onnx.TensorProto], dict[str, int]]:
    """The graph's initializers by name, and how many node inputs read each name (both quantizers' scan)."""
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return {t.name: t for t in graph.initializer}, uses


def matmul_weight(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int]
) -> bool | None:
    """None: not a candidate; else whether the constant 2-D weight is stored [N, K] (Gemm transB=1)."""
    if node.domain not in ("", "ai.onnx") or len(node.input) != 2 or node.input[1] not in inits:
        return None
    if uses[node.input[1]] != 1 or len(inits[node.input[1]].dims) != 2:
        return None  # a shared or batched weight keeps its fp form
    if node.op_type == "MatMul":
        return False
    if node.op_type != "Gemm":
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0:
        return None
    return attrs.get("transB", 0) == 1


def count_candidates(
    graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int],
    step: progress.Phase | None = None,
) -> progress.Phase:
    """`step` (default: the caller's progress phase), its total set to the number of matmul weights a quantizer
    will rewrite."""
    step = step or progress.current()
    step.set_total(sum(matmul_weight(n, inits, uses) is not None for n in graph.node))
    return step


def _as_kn(arr: np.ndarray, transposed: bool) -> np.ndarray:
    """The weight as contiguous fp32 [K, N] in one copy (the cast and the transpose together; fp16 -> fp32 is
    exact, so the quantizer sees the same values as after astype + .T + ascontiguousarray)."""
    return np.ascontiguousarray(arr.T if transposed else arr, dtype=np.float32)


def output_bytes(graph: onnx.GraphProto, opts: QuantizeOptions, threshold: int) -> int:
    """The size of the output's external data file, known before any weight is read (the save phase's total):
    the kept initializers that go external, then per weight MatMulNBits' packed blocks, scales, zero points."""
    inits, uses = initializers_and_uses(graph)
    kpack = 8 // opts.bits
    total, weights = 0, set()
    for node in graph.node:
        transposed = matmul_weight(node, inits, uses)
        if transposed is None:
            continue
        w = inits[node.input[1]]
        weights.add(w.name)
        k, n = (w.dims[1], w.dims[0]) if transposed else (w.dims[0], w.dims[1])
        k_blocks = -(-k // opts.block_size)
        act = onnx.helper.tensor_dtype_to_np_dtype(w.data_type).itemsize
        sizes = [n * k_blocks * -(-opts.block_size // kpack), n * k_blocks * act]
        if not opts.symmetric:
            sizes.append(n * -(-k_blocks // kpack))
        total += sum(b for b in sizes if external(b, threshold))
    for t in graph.initializer:
        if t.name in weights:
            continue
        if uses_external_data(t):
            b = int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        elif t.HasField("raw_data"):
            b = len(t.raw_data)
        else:
            continue
        total += b if external(b, threshold) else 0
    return total


def quantize_graph(
    model: onnx.ModelProto, base_dir: Path, opts: QuantizeOptions, writer: DataWriter,
    step: progress.Phase | None = None,
) -> tuple[onnx.ModelProto, int]:
    """Every MatMul (and bias-free Gemm, e.g. our lm_head) with a constant 2-D weight -> com.microsoft MatMulNBits.

    The block quantization is onnxruntime's own (DefaultWeightOnlyQuantizer.qbits_block_quant, the C++ RTN kernels
    behind MatMulNBitsQuantizer, onnxruntime/python/tools/quantization/matmul_nbits_quantizer.py); the node is
    built the way its quantize_matmul builds it. Streamed: the kept initializers are copied to `writer` first,
    then each weight is read from the source's external data file, quantized, and handed to `writer` (which
    writes it on its thread while the next is quantized); the proto keeps only external-data references. Peak
    memory: ~2 fp32 copies of the largest matrix (MatMulNBitsQuantizer.process() holds the whole fp graph and its
    quantized copy: 10.6 GB for the 4 GB 7B-slice decoder). The output is the bytes the whole-model
    onnx.save_model wrote before (huluexport/export/extdata.py).
        before:  A [M, K] -> MatMul <- W [K, N]          (or Gemm(transB=1) <- W [N, K])
        after:   A [M, K] -> MatMulNBits(K, N, bits, block_size, accuracy_level)
                               <- W_q [N, ceil(K/block), block*bits/8] uint8, scales [N, ceil(K/block)],
                                  zero_points [N, ceil(ceil(K/block)*bits/8)] uint8
    Returns the model and how many Gemm nodes were rewritten.
    """
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    root.setLevel(saved[0])  # its package calls logging.basicConfig(level=INFO) on import: undo that
    root.handlers[:] = saved[1]
    config = DefaultWeightOnlyQuantConfig(
        block_size=opts.block_size,
        is_symmetric=opts.symmetric,
        accuracy_level=opts.accuracy_level,
        bits=opts.bits,
    )
    quantizer = DefaultWeightOnlyQuantizer(config)
    graph = model.graph
    inits, uses = initializers_and_uses(graph)
    step = count_candidates(graph, inits, uses, step)
    weights = {n.input[1] for n in graph.node if matmul_weight(n, inits, uses) is not None}
    kept = [t for t in graph.initializer if t.name not in weights]
    for t in kept:  # written first: the whole-model save put them before the quantized weights
        copy_kept(t, base_dir, writer)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    gemms = 0
    for node in graph.node:
        transposed = matmul_weight(node, inits, uses)
        if transposed is None:
            new_nodes.append(node)
            continue
        w = inits[node.input[1]]
        step.note(w.name)
        src = read_weight(w, base_dir)
        act = onnx.helper.tensor_dtype_to_np_dtype(w.data_type)  # MatMulNBits' scales share the activation type
        arr = _as_kn(src, bool(transposed))
        del src
        k, n = arr.shape
        packed, scales, zero_points = quantizer.qbits_block_quant(arr)
        del arr
        q = f"{w.name}_Q{opts.bits}"
        outs = [(q, packed), (f"{w.name}_scales", scales.astype(act, copy=False))]
        if not opts.symmetric:
            outs.append((f"{w.name}_zero_points", zero_points))
        for name, value in outs:
            t = onnx.TensorProto(name=name, dims=value.shape,
                                 data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
            writer.put(t, value)
            new_inits.append(t)
        names = [name for name, _ in outs]
        del packed, scales, zero_points, outs
        attrs: dict[str, int] = {"K": k, "N": n, "bits": opts.bits, "block_size": opts.block_size}
        if opts.accuracy_level:
            attrs["accuracy_level"] = opts.accuracy_level
        new_nodes.append(
            onnx.helper.make_node(
                "MatMulNBits",
                [node.input[0], *names],
                list(node.output),
                name=f"{node.name}_Q{opts.bits}",
                domain="com.microsoft",
                **attrs,
            )
        )
        gemms += node.op_type == "Gemm"
        step.advance()
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + new_inits)
    write_subgraph_tensors(graph, base_dir, writer)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model, gemms


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """MatMul with a constant weight, and MatMulNBits nodes (what the tests and the log report)."""
    inits = {t.name for t in model.graph.initializer}
    out = {"MatMul(const weight)": 0, "MatMulNBits": 0, "Gemm(const weight)": 0}
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            out["MatMulNBits"] += 1
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            out[f"{n.op_type}(const weight)"] += 1
    return out


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of `graph` and its subgraphs (where external data can be referenced)."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def check_external_data(model: onnx.ModelProto, base_dir: Path, path: Path, listed: set[str] | None) -> None:
    """Every tensor's external-data location must be a relative path that resolves inside the bundle and (when
    `listed` is given) a file the manifest lists, so only hash-checked bytes of this bundle are ever read."""
    for t in _tensors(model.graph):
        if not uses_external_data(t):
            continue
        loc = ExternalDataInfo(t).location
        where = f"{path}: tensor {t.name!r} keeps its data at {loc!r}"
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ManifestError(f"{where}; external data must be a relative path inside the bundle")
        try:
            rt.inside(base_dir, loc, "external data file")
        except ManifestError as exc:
            raise ManifestError(f"{where}, which resolves outside the bundle ({exc})") from None
        if listed is not None and Path(loc).as_posix() not in listed:
            raise ManifestError(f"{where}, a file {base_dir / rt.MANIFEST} does not list (so not hash-checked)")


def _check_graph_file(src: Path, rel: str, listed: set[str]) -> None:
    path = src / rel
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:  # missing / not a protobuf
        raise ExportError(f"{path}: cannot load the graph ({exc})") from None
    check_external_data(model, src, path, listed)


def quantize_piece(
    src: Path, dst: Path, entry: rt.PieceEntry, opts: QuantizeOptions, listed: set[str] | None = None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    path = src / entry.file
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:  # missing / not a protobuf
        raise ExportError(f"{path}: cannot load the graph ({exc})") from None
    check_external_data(model, src, path, listed)
    fp_bytes = sum(
        int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )
    data = f"{entry.file}.data"
    try:
        with progress.phase(f"{entry.file}: quantize to int{opts.bits}", unit="matrices") as matrices, \
                progress.phase(f"{entry.file}: save", output_bytes(model.graph, opts, INLINE_BYTES), "B") as saving:
            # the save phase runs alongside: it counts the bytes as the writer thread writes them
            with DataWriter(dst / data, data, INLINE_BYTES, saving) as writer:
                model, rewritten = quantize_graph(model, src, opts, writer, matrices)
            q_bytes = writer.offset
            ops = count_ops(model)
            if ops["MatMulNBits"] == 0:
                raise ExportError(
                    f"{path}: no MatMul with a constant weight was quantized; is this a huluexport graph?"
                )
            onnx.save_model(model, str(dst / entry.file))
            for f in (dst / entry.file, dst / data):
                f.chmod(0o644)
            if not q_bytes:
                (dst / data).unlink()
    except (OSError, ValueError) as exc:  # missing/short external data file
        raise ExportError(
            f"{path}: cannot read its external weights ({exc}); check the bundle with `huluexport inspect`"
        ) from None
    seconds = time.perf_counter() - t0
    log.info(
        "quantize: %s: %d MatMulNBits (%d Gemm rewritten), %d const MatMul left, %.2f -> %.2f GB (%.1f s)",
        entry.file,
        ops["MatMulNBits"],
        rewritten,
        ops["MatMul(const weight)"],
        fp_bytes / 1e9,
        q_bytes / 1e9,
        seconds,
    )
    return {"ops": ops, "gemm_rewritten": rewritten, "seconds": seconds, "data": data if q_bytes else None}


# --------------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------------


def quantize_bundle(
    src_bundle: str | Path,
    out_bundle: str | Path,
    *,
    bits: int = 4,
    block_size: int = 32,
    pieces: tuple[str, ...] = (),
    accuracy_level: int = 4,
    symmetric: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a copy of `src_bundle` at `out_bundle` with `pieces` (default: every decoder form it has) quantized;
    the manifest records each piece's precision ("int4" / "int8") and how (compute["weights"]). Written to a
    temporary sibling, moved at the end."""
    opts = QuantizeOptions(
        Path(src_bundle),
        Path(out_bundle),
        bits,
        block_size,
        tuple(pieces),
        accuracy_level,
        symmetric,
        overwrite,
    )
    return quantize(opts)


def quantize(opts: QuantizeOptions) -> Path:
    check_options(opts)
    check_out(opts.out, [opts.src], overwrite=opts.overwrite)  # the --out rules, before any work
    t_start = time.perf_counter()
    # hashes checked as hulurt.load checks them: a damaged bundle must not come out re-signed with fresh hashes
    with progress.phase("check the source bundle (sha256)"):
        m = rt.load_manifest(opts.src, verify_hashes=True)
    pieces = opts.pieces or default_pieces(m.pieces, opts.format)
    if not pieces:
        wanted = QDQ_PIECES if opts.format == "qdq" else QUANTIZABLE
        raise ConfigError(f"{m.path}: bundle has no piece to quantize with --format {opts.format} (expected one "
                          f"of {', '.join(wanted)}); it has {sorted(m.pieces)}")
    left = [p for p in m.pieces if p in QUANTIZABLE and p not in pieces]
    if left:
        log.info("quantize: %s stay%s %s (not asked for%s)", ", ".join(left), "s" * (len(left) == 1), m.precision,
                 "; the qdq form is the v1 decoder's" if opts.format == "qdq" else "")
    for p in pieces:
        if p not in m.pieces:
            raise ConfigError(f"{m.path}: bundle has no piece {p!r} to quantize; it has {sorted(m.pieces)}")
        if m.pieces[p].precision not in rt.PRECISIONS:
            raise ConfigError(
                f"{m.path}: piece {p!r} is already {m.pieces[p].precision}; quantize an fp32/fp16 bundle instead"
            )
    raw = rt.read_manifest_json(m.root)
    out = Path(opts.out)
    with staged(out, [opts.src], overwrite=opts.overwrite) as tmp:
        skip = {rt.MANIFEST}
        for p in pieces:
            skip |= {f for f in (m.pieces[p].file, m.pieces[p].data) if f is not None}
        copy = [rel for rel in m.files if rel not in skip]
        with progress.phase("copy the other files", total=sum(m.files[r].bytes for r in copy), unit="B") as step:
            for rel in copy:
                step.note(rel)
                _copy_regular(m.root, rel, tmp)
                step.advance(m.files[rel].bytes)
        for p in pieces:
            e = m.pieces[p]
            compute = dict(e.compute)
            if opts.format == "qdq":
                from huluexport.export import qdq

                _check_graph_file(m.root, e.file, set(m.files))  # quantize_piece's rule, before qdq reads weights
                res = qdq.quantize_piece(m.root, tmp, e, opts.block_size)
                compute["weights"] = qdq.describe(opts.block_size, m.dims.act_dtype)
                compute["quant_format"] = "qdq"
            else:
                res = quantize_piece(m.root, tmp, e, opts, listed=set(m.files))
                compute["weights"] = describe(opts, m.dims.act_dtype)
            new = dataclasses.replace(
                e, data=res["data"], precision=precision_name(opts.bits), compute=compute
            )
            raw["pieces"][p] = dataclasses.asdict(new)
        with progress.phase("manifest (hash the bundle)", unit="B"):
            raw["files"] = {k: dataclasses.asdict(v) for k, v in list_files(tmp).items()}
            raw["tools"] = {**raw.get("tools", {}), **tool_versions()}
            write_manifest(tmp, raw)
    log.info("quantize: %s done in %.1f s", out, time.perf_counter() - t_start)
    return out


def _copy_regular(root: Path, rel: str, dst: Path) -> None:
    """Copy one listed side file (tokenizer, templates, other pieces): a regular file inside the bundle, never
    through a symbolic link (hulurt.manifest.inside resolves the parents)."""
    src = rt.inside(root, rel)
    st = os.lstat(root / rel)
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ManifestError(f"{root / rel}: is {kind}; a bundle's files must be regular files inside it. Copy "
                            "the real file into the bundle and rebuild its manifest with `huluexport build`")
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst / rel, follow_symlinks=False)
