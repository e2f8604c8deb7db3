"""Runtime (hulurt, onnxruntime) vs the reference model's `generate` (PyTorch) on the same bundle and inputs,
in one run: time to first token and decode tokens/s. Not a test; writes benchmarks/results/runtime.md.

Both sides are timed the same way from the outside: TTFT = wall time of a request with max_new_tokens=1
(vision + embed + prefill + first token); decode = (N - 1) / (wall(N) - wall(1)) tokens/s. Greedy, no stop ids,
identical prompt ids and pixel patches. The bundle carries random weights (`huluexport build --random-weights`),
so the reference is rebuilt from the same seed; its greedy tokens are compared with the runtime's as a check.

    .venv/bin/python benchmarks/bench_runtime.py                       # 4b-width 2-layer slice, built if missing
    .venv/bin/python benchmarks/bench_runtime.py --bundle DIR --new-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class _Silent:
    """The loop needs a decoder for streaming text; random-weight bundles have no tokenizer."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return ""


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)
    return (f"{cpu} ({isa}), {os.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"load average at start {os.getloadavg()[0]:.1f} (machine shared with other jobs)")


def make_request(manifest, prompt_tokens: int, image_side: int, seed: int):
    """Random text ids around one image's worth of <image> ids, and that image's patches (identical for both)."""
    from hulurt.generate import PromptFeed, VisualFeed

    rng = np.random.default_rng(seed)
    tok = manifest.tokens
    specials = {tok.image, tok.endoftext, tok.im_start, tok.im_end, *tok.eos}
    vocab = min(manifest.dims.vocab, 151643)  # ordinary BPE ids
    text = [int(i) for i in rng.integers(0, vocab, prompt_tokens) if int(i) not in specials]
    visuals = ()
    n_img = 0
    if image_side:
        g = image_side // 14
        patches = rng.uniform(-1, 1, (1, g * g, 1, 588)).astype(np.float32)  # one frame, m=1
        visuals = (VisualFeed(patches, (g, g), 1, None),)
        n_img = g * g
    ids = np.array(text[:8] + [tok.image] * n_img + text[8:], dtype=np.int64)
    return PromptFeed(ids, visuals)


def runtime_engine(gen, feed):
    """n -> (wall seconds, new token ids) for one hulurt request."""

    def once(n: int):
        t = time.perf_counter()
        g = gen.generate(feed, _Silent(), max_new_tokens=n, stop_ids=()).result()
        return time.perf_counter() - t, g.token_ids

    return once


def reference_engine(ref, feed):
    """n -> (wall seconds, new token ids) for one reference HuluMed.generate call on the same ids and patches."""
    import torch

    from huluexport.reference.model import VisualInput

    vis = [VisualInput(v.patches.reshape(v.patches.shape[0], -1, 588), grid=v.grid_hw, merge=v.merge, modal="image")
           for v in feed.visuals]  # [T, G, 1, 588] -> [T, n, 588]
    ids = torch.from_numpy(feed.input_ids)

    def once(n: int):
        t = time.perf_counter()
        toks = ref.generate(ids, vis, max_new_tokens=n, eos=())
        return time.perf_counter() - t, toks

    return once


def interleaved(engines: dict, n_new: int, repeats: int) -> tuple[dict, dict]:
    """engines: name -> (run on the TTFT request, run on the decode request), each n -> (seconds, tokens).
    Warm every engine up, then run them in turn (A B A B ...) so load from other jobs hits all alike.
    TTFT = wall of the multimodal request with max_new_tokens=1; decode rate = (N-1) / (wall(N) - wall(1)) on
    the short text request, whose prefill is small, so the difference is nearly all decode steps."""
    for on_ttft, on_decode in engines.values():
        on_ttft(1)
        on_decode(2)
    ttft: dict[str, list[float]] = {k: [] for k in engines}
    rates: dict[str, list[float]] = {k: [] for k in engines}
    tokens: dict[str, list[int]] = {}
    for _ in range(repeats):
        for name, (on_ttft, on_decode) in engines.items():
            ttft[name].append(on_ttft(1)[0])
            t1 = on_decode(1)[0]
            tn, tokens[name] = on_decode(n_new)
            rates[name].append((n_new - 1) / (tn - t1))
    rows = {}
    for name in engines:
        rows[name] = {"ttft_ms": statistics.median(ttft[name]) * 1e3, "ttft_best_ms": min(ttft[name]) * 1e3,
                      "decode_tok_s": statistics.median(rates[name]), "decode_best_tok_s": max(rates[name])}
        print(name, rows[name], flush=True)
    return rows, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "bench" / "4b-l2-fp32")
    ap.add_argument("--size", default="4b", help="preset for building the bundle when it is missing")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=96)
    ap.add_argument("--image-side", type=int, default=224, help="0 = text only; else one square image (m=1)")
    ap.add_argument("--decode-prompt-tokens", type=int, default=24, help="text prompt of the decode-rate request")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-dtypes", default="float32,bfloat16")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime.md")
    args = ap.parse_args()

    import psutil

    if not (args.bundle / "manifest.json").is_file():
        print(f"building {args.bundle} (--size {args.size} --layers {args.layers}, random weights, fp32)")
        subprocess.run([str(ROOT / ".venv" / "bin" / "huluexport"), "build", "--size", args.size, "--random-weights",
                        "--layers", str(args.layers), "--precision", "fp32", "--out", str(args.bundle)], check=True)
    from hulurt.api import facts_of
    from hulurt.backends import open_session
    from hulurt.backends.base import BackendOptions
    from hulurt.generate import Generator
    from hulurt.manifest import load_manifest

    mf = load_manifest(args.bundle, verify_hashes=False)
    proc = psutil.Process()
    env = machine()
    feed = make_request(mf, args.prompt_tokens, args.image_side, seed=0)  # TTFT: text + one image
    text_feed = make_request(mf, args.decode_prompt_tokens, 0, seed=1)  # decode rate: short text prompt
    print(f"bundle {args.bundle}: hidden {mf.dims.hidden}, layers {mf.dims.layers}, vocab {mf.dims.vocab}; "
          f"prompt {feed.input_ids.size} tokens ({sum(v.tokens_before for v in feed.visuals)} visual)")

    # ---- engines: hulurt (two KV strategies) and the reference, loaded side by side ------------------------
    import torch

    from huluexport.config import preset
    from huluexport.export.pipeline import WeightSpec, config_from_dict, reference_model, weight_source

    opts = BackendOptions(provider="cpu", threads=args.threads)
    t = time.perf_counter()
    sessions = {p: open_session(mf.piece_path(p), opts) for p in ("vision", "embed", "decoder")}
    load_rt = time.perf_counter() - t
    g_chain = Generator(sessions, facts_of(mf), kv_strategy="chain")
    g_buffer = Generator(sessions, facts_of(mf), kv_strategy="buffer")
    rt_chain = (runtime_engine(g_chain, feed), runtime_engine(g_chain, text_feed))
    rt_buffer = (runtime_engine(g_buffer, feed), runtime_engine(g_buffer, text_feed))

    torch.set_num_threads(args.threads)
    cfg = config_from_dict({k: v for k, v in mf.model.items() if k != "weights"})
    w = dict(mf.model["weights"])
    if w["kind"] == "checkpoint":  # the manifest records no local path: find the checkpoint again
        from huluexport.checkpoint.hub import recorded_checkpoint

        w["checkpoint"] = str(recorded_checkpoint(w, mf.path))
    full_cfg = preset(args.size) if w["kind"] == "random" else cfg
    source = weight_source(full_cfg, WeightSpec(**w))
    rows: dict[str, dict] = {}
    tokens: dict[str, list[int]] = {}
    pairs: list[tuple[str, str]] = []  # (runtime row, reference row) measured in the same interleaved round
    for i, dtype in enumerate(args.reference_dtypes.split(",")):
        ref = reference_model(cfg, source, dtype=getattr(torch, dtype))
        ref_name = f"reference HuluMed.generate (PyTorch {torch.__version__}, {dtype})"
        rt_name = f"hulurt (onnxruntime CPU, fp32, KV buffer = default) [round {i + 1}]"
        engines = {rt_name: rt_buffer, ref_name: (reference_engine(ref, feed), reference_engine(ref, text_feed))}
        if i == 0:
            engines["hulurt (onnxruntime CPU, fp32, KV chain) [round 1]"] = rt_chain
        r, tk = interleaved(engines, args.new_tokens, args.repeats)
        rows.update(r)
        tokens.update({("runtime" if k == rt_name and i == 0 else k): v for k, v in tk.items()})
        tokens[dtype] = tk[ref_name]
        pairs.append((rt_name, ref_name))
        del ref, engines
        gc.collect()
    rss = proc.memory_info().rss / 2**30

    same = tokens["runtime"] == tokens.get("float32")
    lines = [
        "# Runtime vs reference: decode tokens/s and time to first token",
        "",
        f"Generated by `benchmarks/bench_runtime.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Machine: {env}.",
        (f"- Model: `{args.bundle.name}` = "
         + (f"`huluexport build --size {args.size} --layers {args.layers} --random-weights --precision fp32`"
            if w["kind"] == "random" else f"fp32 bundle of the checkpoint {w['checkpoint']}")
         + f" (hidden {mf.dims.hidden}, {mf.dims.layers} decoder layers, vocab "
         f"{mf.dims.vocab}, kv_heads {mf.dims.kv_heads}, head_dim {mf.dims.head_dim}; vision {cfg.vision.layers} "
         f"layers of width {cfg.vision.hidden}). Random weights: speed only."),
        (f"- TTFT request: {feed.input_ids.size} prompt tokens ({sum(v.tokens_before for v in feed.visuals)} of "
         f"them from one {args.image_side}x{args.image_side} image, m=1), max_new_tokens=1: vision + embed + "
         "prefill + first token."),
        (f"- Decode request: a {text_feed.input_ids.size}-token text prompt; decode tok/s = (N-1) / (wall(N) - "
         f"wall(1)) with N = {args.new_tokens}, greedy, no stop ids (the short prefill keeps the difference to "
         "decode steps)."),
        (f"- {args.threads} threads on both sides; median (and best) of {args.repeats} repeats after a warm-up. "
         "Both sides are timed the same way, in one process, interleaved (runtime, reference, runtime, ...) so "
         "load from other jobs on the machine hits both alike."),
        f"- Greedy tokens of the runtime == the fp32 reference's: **{'yes' if same else 'NO'}**.",
        f"- Session load {load_rt:.1f} s; process RSS at the end {rss:.1f} GiB.",
        "",
        "| engine | TTFT median (best) ms | decode tok/s, median |",
        "|---|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ttft_ms']:.0f} ({r['ttft_best_ms']:.0f}) | {r['decode_tok_s']:.2f} |")
    lines += ["", ("| hulurt vs reference (same interleaved round) | decode speed-up per token, median | "
                   "TTFT speed-up, median |"), "|---|---:|---:|"]
    for rt_name, ref_name in pairs:
        a, b = rows[rt_name], rows[ref_name]
        lines.append(f"| {ref_name.split('(')[1].rstrip(')')} | {a['decode_tok_s'] / b['decode_tok_s']:.2f}x | "
                     f"{b['ttft_ms'] / a['ttft_ms']:.2f}x |")
    lines += [
        "",
        "Reading the numbers: compare rows only within one interleaved round (rounds run minutes apart and the",
        "machine is shared, so absolute rates drift between rounds). Decode on the 4b-width slice is bound by",
        "reading the weights once per token (~2.4 GB in fp32: the 151936 x 2560 lm_head dominates), the same for both",
        "engines; hulurt's per-token gain comes from doing less around that (one fused onnxruntime graph per",
        "step, logits for the last position only, no Python per layer), its TTFT gain mostly from the prefill",
        "computing logits for the last position only (the reference computes [L, vocab]). bf16 is the dtype",
        "upstream runs in; on this AVX2 CPU without native bf16 PyTorch emulates it, so that row flatters hulurt.",
        "Single repeats swing by 2x or more on this shared 2-core machine (a slow wall(1) shrinks the difference),",
        "so only medians are shown; the raw per-engine numbers, with the best repeat, are in runtime.json.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    doc = {"rows": rows, "tokens_equal": same, "machine": env}
    (args.out.with_suffix(".json")).write_text(json.dumps(doc, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
