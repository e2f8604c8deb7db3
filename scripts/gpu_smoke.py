"""Is the onnxruntime that scripts/gpu_bench.sh installed able to run our decoder's operators on this GPU?

Builds a small fp16 graph in memory (MatMul -> com.microsoft::GroupQueryAttention over fixed-capacity past/present
buffers -> MatMul -> Softmax), runs it on the CUDA execution provider with CPU fallback disabled (every node must
get a CUDA kernel) and on the CPU provider, and compares. This is the first thing that loads the CUDA provider
library, whose fatbins scripts/ort_slim.py cut to one architecture: a failure here means "go back to the full
wheel" (docs/gpu.md), found in seconds rather than after the bundles were built. Exit 0 and one line when all is
well; exit 3 and the reason otherwise.

    python3 scripts/gpu_smoke.py                  # the check, on the CUDA provider
    python3 scripts/gpu_smoke.py --provider cpu   # the script's own logic on the CPU provider (tests/unit)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

H, HEADS, KV_HEADS, D, CAP, L = 64, 4, 2, 16, 32, 8  # hidden, q heads, kv heads, head dim, KV capacity, rows


def model() -> bytes:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    w = {n: nh.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float16), n)
         for n, s in (("wq", (H, HEADS * D)), ("wk", (H, KV_HEADS * D)), ("wv", (H, KV_HEADS * D)),
                      ("wo", (HEADS * D, H)))}
    nodes = [
        oh.make_node("MatMul", ["x", "wq"], ["q"]), oh.make_node("MatMul", ["x", "wk"], ["k"]),
        oh.make_node("MatMul", ["x", "wv"], ["v"]),
        oh.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k",
                                             "total_sequence_length"], ["attn", "present_key", "present_value"],
                     domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS),
        oh.make_node("MatMul", ["attn", "wo"], ["o"]), oh.make_node("Softmax", ["o"], ["y"], axis=-1),
    ]
    kv = [1, KV_HEADS, CAP, D]
    graph = oh.make_graph(
        nodes, "gqa_smoke",
        [oh.make_tensor_value_info("x", T.FLOAT16, [1, L, H]),
         oh.make_tensor_value_info("past_key", T.FLOAT16, kv), oh.make_tensor_value_info("past_value", T.FLOAT16, kv),
         oh.make_tensor_value_info("seqlens_k", T.INT32, [1]),
         oh.make_tensor_value_info("total_sequence_length", T.INT32, [])],
        [oh.make_tensor_value_info("y", T.FLOAT16, [1, L, H]),
         oh.make_tensor_value_info("present_key", T.FLOAT16, kv),
         oh.make_tensor_value_info("present_value", T.FLOAT16, kv)],
        initializer=list(w.values()))
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.checker.check_model(m)
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
        for n in ("x", "seqlens_k", "total_sequence_length"):
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
    print(f"GPU smoke ok: onnxruntime {ort.__version__} {ep} ran MatMul + GroupQueryAttention + Softmax "
          f"(fp16{fallback}) = CPU provider, also in place on one shared device KV buffer, in {time.time() - t0:.1f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
