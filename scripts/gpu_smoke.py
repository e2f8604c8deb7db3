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

import numpy as np

H, HEADS, KV_HEADS, D, CAP, L = 64, 4, 2, 16, 32, 8  # hidden, q heads, kv heads, head dim, KV capacity, rows
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
        [oh.make_tensor_value_info("x", T.FLOAT16, [1, L, H]), oh.make_tensor_value_info("skip", T.FLOAT16, [1, L, H]),
         oh.make_tensor_value_info("past_key", T.FLOAT16, kv), oh.make_tensor_value_info("past_value", T.FLOAT16, kv),
         oh.make_tensor_value_info("seqlens_k", T.INT32, [1]),
         oh.make_tensor_value_info("total_sequence_length", T.INT32, []),
         oh.make_tensor_value_info("position_ids", T.INT64, [1, L])],
        [oh.make_tensor_value_info("y", T.FLOAT16, [1, L, H]),
         oh.make_tensor_value_info("present_key", T.FLOAT16, kv),
         oh.make_tensor_value_info("present_value", T.FLOAT16, kv)],
        initializer=list(w.values()))
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8  # no onnx.checker: SimplifiedLayerNormalization is onnxruntime's, in the ONNX domain
    return m.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    dev = ap.parse_args(argv).provider
    ep = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[dev]
    t0 = time.time()
    try:
        import onnxruntime as ort

        if ep not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime {ort.__version__} at {ort.__file__} has no {ep}")
        blob = model()
        rng = np.random.default_rng(1)
        feeds = {"x": rng.standard_normal((1, L, H)).astype(np.float16),
                 "skip": rng.standard_normal((1, L, H)).astype(np.float16),
                 "position_ids": np.arange(L, dtype=np.int64)[None],
                 "past_key": np.zeros((1, KV_HEADS, CAP, D), np.float16),
                 "past_value": np.zeros((1, KV_HEADS, CAP, D), np.float16),
                 "seqlens_k": np.array([L - 1], np.int32), "total_sequence_length": np.array(L, np.int32)}
        so = ort.SessionOptions()
        if dev == "cuda":
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # every node on CUDA, or fail
        gpu = ort.InferenceSession(blob, so, providers=[ep])
        if gpu.get_providers()[0] != ep:
            raise RuntimeError(f"the session runs on {gpu.get_providers()}, not {ep}")
        cpu = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        got, want = gpu.run(None, feeds), cpu.run(None, feeds)
        for name, g, c in zip(("y", "present_key", "present_value"), got, want, strict=True):
            g64, c64 = g.astype(np.float64), c.astype(np.float64)
            if not np.isfinite(g64).all():
                raise RuntimeError(f"{name}: non-finite values on CUDA")
            # fp16 graph on two providers: each sums in its own order; 1e-2 relative is ~8 fp16 ulps of the norm
            err = np.linalg.norm(g64 - c64) / max(np.linalg.norm(c64), 1e-12)
            if err > 1e-2:
                raise RuntimeError(f"{name}: CUDA vs CPU relative error {err:.2e} > 1e-2")
        rows = np.abs(got[1][0, :, :L]).sum() > 0 and not np.abs(got[1][0, :, L:]).any()
        if not rows:
            raise RuntimeError("present_key: expected rows 0..7 written and the rest of the capacity untouched")
        # as hulurt/static_decode.py runs it: one device buffer bound as both past and present, written in place
        io = gpu.io_binding()
        kv = {n: ort.OrtValue.ortvalue_from_numpy(feeds[n], dev, 0) for n in ("past_key", "past_value")}
        for n in ("x", "skip", "position_ids", "seqlens_k", "total_sequence_length"):
            io.bind_cpu_input(n, feeds[n])
        io.bind_output("y", dev)  # first: copy_outputs_to_cpu() returns outputs in the order they were bound
        for n, v in kv.items():
            io.bind_ortvalue_input(n, v)
            io.bind_ortvalue_output(n.replace("past", "present"), v)
        gpu.run_with_iobinding(io)
        y = io.copy_outputs_to_cpu()[0]
        if not np.array_equal(kv["past_key"].numpy(), got[1]) or not np.allclose(y, got[0], rtol=0, atol=1e-3):
            raise RuntimeError("shared past/present buffer on the device: results differ from the unbound run")
    except Exception as e:  # the reason is the output: the caller decides between slim and full wheel
        print(f"GPU SMOKE FAILED: {type(e).__name__}: {e}", flush=True)
        return 3
    fallback = ", no CPU fallback" if dev == "cuda" else ""
    print(f"GPU smoke ok: onnxruntime {ort.__version__} {ep} ran {', '.join(OPS)} (fp16{fallback}) = CPU provider, "
          f"also in place on one shared device KV buffer, in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
