"""Is the onnxruntime that scripts/gpu_bench.sh installed able to run our decoder's operators on this GPU?

Builds a small fp16 graph in memory with the operators of the gqa-static decoder (docs/gpu.md, "Kernels per
layer"): SkipSimplifiedLayerNormalization -> packed q/k/v MatMul + Add -> com.microsoft::GroupQueryAttention with
rotary (cos/sin tables) over fixed-capacity past/present buffers -> MatMul -> SkipSimplifiedLayerNormalization ->
RotaryEmbedding -> SimplifiedLayerNormalization -> x * Sigmoid(x) * residual -> Softmax. It runs the graph on the
CUDA execution provider with CPU fallback disabled (every node must get a CUDA kernel) and on the CPU provider, and
compares. This is the first thing that loads the CUDA provider library, whose fatbins scripts/ort_slim.py cut to
one architecture: a failure here means "go back to the full wheel" (docs/gpu.md), found in seconds rather than
after the bundles were built. Exit 0 and one line when all is well; exit 3 and the reason otherwise.

    python3 scripts/gpu_smoke.py                  # the check, on the CUDA provider
    python3 scripts/gpu_smoke.py --provider cpu   # the script's own logic on the CPU provider (tests/unit)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

H, HEADS, KV_HEADS, D, CAP, L, CHUNK = 64, 4, 2, 16, 32, 8, 3  # hidden, q/kv heads, head dim, KV capacity, rows
OPS = ("SkipSimplifiedLayerNormalization", "MatMul", "Add", "GroupQueryAttention (packed, rotary)",
       "RotaryEmbedding", "SimplifiedLayerNormalization", "Sigmoid", "Mul", "Softmax")


def model() -> bytes:
    from onnx import TensorProto as T
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    qkv = (HEADS + 2 * KV_HEADS) * D
    shapes = (("wqkv", (H, qkv)), ("bqkv", (qkv,)), ("wo", (HEADS * D, H)), ("g1", (H,)), ("g2", (H,)), ("g3", (H,)))
    w = {n: nh.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float16), n) for n, s in shapes}
    ang = np.arange(CAP)[:, None] / 10000.0 ** (np.arange(0, D, 2) / D)  # (CAP, D/2)
    w["cos"] = nh.from_array(np.cos(ang).astype(np.float16), "cos")
    w["sin"] = nh.from_array(np.sin(ang).astype(np.float16), "sin")
    ms = "com.microsoft"
    nodes = [
        oh.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "g1"], ["h", "", "", "s"], domain=ms,
                     epsilon=1e-6),
        oh.make_node("MatMul", ["h", "wqkv"], ["qkv0"]), oh.make_node("Add", ["qkv0", "bqkv"], ["qkv"]),
        oh.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens_k",
                                             "total_sequence_length", "cos", "sin"],
                     ["attn", "present_key", "present_value"], domain=ms, num_heads=HEADS, kv_num_heads=KV_HEADS,
                     do_rotary=1, rotary_interleaved=0),
        oh.make_node("MatMul", ["attn", "wo"], ["o"]),
        oh.make_node("SkipSimplifiedLayerNormalization", ["s", "o", "g2"], ["h2", "", "", "s2"], domain=ms,
                     epsilon=1e-6),
        oh.make_node("RotaryEmbedding", ["h2", "position_ids", "cos", "sin"], ["r"], domain=ms, interleaved=0),
        oh.make_node("SimplifiedLayerNormalization", ["r", "g3"], ["n"], axis=-1, epsilon=1e-6, stash_type=1),
        oh.make_node("Sigmoid", ["n"], ["sg"]), oh.make_node("Mul", ["n", "sg"], ["silu"]),
        oh.make_node("Mul", ["silu", "s2"], ["m"]), oh.make_node("Softmax", ["m"], ["y"], axis=-1),
    ]
    kv = [1, KV_HEADS, CAP, D]
    graph = oh.make_graph(
        nodes, "gqa_smoke",
        [oh.make_tensor_value_info("x", T.FLOAT16, [1, "S", H]),
         oh.make_tensor_value_info("skip", T.FLOAT16, [1, "S", H]),
         oh.make_tensor_value_info("past_key", T.FLOAT16, kv), oh.make_tensor_value_info("past_value", T.FLOAT16, kv),
         oh.make_tensor_value_info("seqlens_k", T.INT32, [1]),
         oh.make_tensor_value_info("total_sequence_length", T.INT32, []),
         oh.make_tensor_value_info("position_ids", T.INT64, [1, "S"])],
        [oh.make_tensor_value_info("y", T.FLOAT16, [1, "S", H]),
         oh.make_tensor_value_info("present_key", T.FLOAT16, kv),
         oh.make_tensor_value_info("present_value", T.FLOAT16, kv)],
        initializer=list(w.values()))
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8  # no onnx.checker: SimplifiedLayerNormalization is onnxruntime's, in the ONNX domain
    return m.SerializeToString()


class CannotRun(Exception):
    """The installed onnxruntime cannot run these operators on this GPU: the slim wheel's fault, or the
    provider's; the full wheel is the fallback (exit 3)."""


class Differs(Exception):
    """The CUDA provider runs the operators, but a result or a later call differs from what the runtime relies
    on: the full wheel has the same sm_90 kernels, so it would not help; measure anyway (exit 4)."""


# messages of the CUDA runtime/driver when a kernel's machine code cannot be loaded: a compaction fault
_LOAD_ERRORS = ("no kernel image", "kernel image is invalid", "invalid device function", "cudaErrorNoKernelImage",
                "CUDA_ERROR_NO_BINARY", "CUDA_ERROR_INVALID_IMAGE", "device kernel image")


def _run(what: str, fn: Any) -> Any:
    """Call `fn` (an onnxruntime run after the first one): a kernel-image failure is CannotRun, any other failure
    Differs, both naming `what`."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- classified and reported by main
        msg = f"{what}: {type(e).__name__}: {e}"
        if any(s.lower() in str(e).lower() for s in _LOAD_ERRORS):
            raise CannotRun(msg) from e
        raise Differs(msg) from e


def compare(name: str, got: Any, want: Any) -> None:
    """fp16 outputs of two providers: finite, and within 1e-2 relative (each sums in its own order; 1e-2 is
    ~8 fp16 ulps of the norm)."""
    g64, c64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if g64.shape != c64.shape:
        raise Differs(f"{name}: shape {g64.shape} != {c64.shape}")
    if not np.isfinite(g64).all():
        raise Differs(f"{name}: non-finite values")
    err = np.linalg.norm(g64 - c64) / max(np.linalg.norm(c64), 1e-12)
    if err > 1e-2:
        raise Differs(f"{name}: relative error {err:.2e} > 1e-2 against the CPU provider")


def written_rows(name: str, kv: Any, upto: int) -> None:
    """Rows [0, upto) of a [1, kv, CAP, D] buffer written, the rest of the capacity still zero."""
    kv = np.asarray(kv)
    if not (np.abs(kv[0, :, :upto]).sum(axis=(0, 2)) > 0).all() or np.abs(kv[0, :, upto:]).any():
        raise Differs(f"{name}: expected rows 0..{upto - 1} written and the rest of the capacity untouched")


def feeds_for(rows: int, past: int, rng: np.random.Generator) -> dict[str, Any]:
    """`rows` new rows after `past` cached ones; seqlens_k = past + rows - 1 (hulurt.contract)."""
    return {"x": rng.standard_normal((1, rows, H)).astype(np.float16),
            "skip": rng.standard_normal((1, rows, H)).astype(np.float16),
            "position_ids": np.arange(past, past + rows, dtype=np.int64)[None],
            "seqlens_k": np.array([past + rows - 1], np.int32),
            "total_sequence_length": np.array(past + rows, np.int32)}


def check(dev: str) -> str:
    """The checks, in the order the runtime meets them; raises CannotRun or Differs."""
    ep = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[dev]
    try:  # the provider, its library and one run of every operator: any failure is the wheel's
        import onnxruntime as ort

        if ep not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime {ort.__version__} at {ort.__file__} has no {ep}")
        blob = model()
        rng = np.random.default_rng(1)
        zeros = np.zeros((1, KV_HEADS, CAP, D), np.float16)
        prompt = {**feeds_for(L, 0, rng), "past_key": zeros, "past_value": zeros}
        so = ort.SessionOptions()
        if dev == "cuda":
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # every node on CUDA, or fail
        gpu = ort.InferenceSession(blob, so, providers=[ep])
        if gpu.get_providers()[0] != ep:
            raise RuntimeError(f"the session runs on {gpu.get_providers()}, not {ep}")
        got = gpu.run(None, prompt)
    except Exception as e:  # noqa: BLE001 -- the reason is the output
        raise CannotRun(f"{type(e).__name__}: {e}") from e
    cpu = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    want = cpu.run(None, prompt)
    for name, g, c in zip(("y", "present_key", "present_value"), got, want, strict=True):
        compare(f"prompt {name}", g, c)
    written_rows("prompt present_key", got[1], L)

    # as hulurt/static_decode.py runs it: one device buffer bound as both past and present, written in place
    # (each its own memory: on the CPU provider an OrtValue shares the numpy array's)
    kv = {n: ort.OrtValue.ortvalue_from_numpy(zeros.copy(), dev, 0) for n in ("past_key", "past_value")}

    def bound(feeds: dict[str, Any]) -> Any:
        io = gpu.io_binding()
        for n in ("x", "skip", "position_ids", "seqlens_k", "total_sequence_length"):
            io.bind_cpu_input(n, feeds[n])
        io.bind_output("y", dev)  # first: copy_outputs_to_cpu() returns outputs in the order they were bound
        for n, v in kv.items():
            io.bind_ortvalue_input(n, v)
            io.bind_ortvalue_output(n.replace("past", "present"), v)
        gpu.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    y = _run("prompt on a shared device KV buffer", lambda: bound(prompt))
    if not np.array_equal(kv["past_key"].numpy(), got[1]) or not np.allclose(y, got[0], rtol=0, atol=1e-3):
        raise Differs("prompt on a shared device KV buffer: results differ from the unbound run")
    cache = {"past_key": want[1], "past_value": want[2]}  # the CPU provider's chain, plain runs

    def cpu_step(feeds: dict[str, Any]) -> list[Any]:
        out = cpu.run(None, {**feeds, **cache})
        cache.update(past_key=out[1], past_value=out[2])
        return out

    # a decode step: one row at position L; on CUDA total_sequence_length stays at the capacity, as the runtime
    # binds it for its captured step (static_decode._total_step); the CPU provider sees the exact length
    step = feeds_for(1, L, rng)
    want = cpu_step(step)
    y = _run("decode step", lambda: bound({**step, "total_sequence_length": np.array(CAP if dev == "cuda" else
                                                                                        L + 1, np.int32)}))
    compare("decode step y", y, want[0])
    compare("decode step present_key", kv["past_key"].numpy(), want[1])
    written_rows("decode step present_key", kv["past_key"].numpy(), L + 1)
    # a prompt chunk after cached rows (hulurt's chunked prefill): several new rows with a past
    chunk = feeds_for(CHUNK, L + 1, rng)
    want = cpu_step(chunk)
    y = _run(f"{CHUNK}-row chunk after {L + 1} cached rows", lambda: bound(chunk))
    compare("chunk y", y, want[0])
    compare("chunk present_value", kv["past_value"].numpy(), want[2])
    written_rows("chunk present_value", kv["past_value"].numpy(), L + 1 + CHUNK)
    return f"onnxruntime {ort.__version__} {ep}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    dev = ap.parse_args(argv).provider
    t0 = time.time()
    try:
        what = check(dev)
    except CannotRun as e:  # the caller goes back to the full wheel
        print(f"GPU SMOKE FAILED (cannot run): {e}", flush=True)
        return 3
    except Differs as e:  # the caller measures anyway and keeps this line with the results
        print(f"GPU SMOKE DIFFERS (runs, but): {e}", flush=True)
        return 4
    except Exception as e:  # noqa: BLE001 -- the CPU side or this script failed: no verdict, measure anyway
        print(f"GPU SMOKE ERROR (no verdict on the GPU): {type(e).__name__}: {e}", flush=True)
        return 4
    fallback = ", no CPU fallback" if dev == "cuda" else ""
    print(f"GPU smoke ok: {what} ran {', '.join(OPS)} (fp16{fallback}) = CPU provider: a prompt, in place on one "
          f"shared device KV buffer, then a decode step and a {CHUNK}-row chunk after it, in {time.time() - t0:.1f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
