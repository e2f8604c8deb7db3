"""Driver of scripts/gpu_bench.sh (docs/gpu.md): builds the random-weight bundles, measures on a CUDA GPU with
onnxruntime-gpu, and writes one JSON, one Markdown and one PNG report.

    python3 scripts/gpu_bench.py build   --work /tmp/hulu-gpu              # CPU only: bundles + tiny test bundles
    python3 scripts/gpu_bench.py measure --work /tmp/hulu-gpu --out $OUT  # GPU: copy bandwidth, benches, GPU tests
    python3 scripts/gpu_bench.py report  --work /tmp/hulu-gpu --out DIR   # report again from the saved JSON

Bundles (7B width, fp16, target h200, both decoder forms, random weights seeded 0):
  b4: 4 decoder layers + the full 27-layer vision tower  (text, the 160-slice CT and the 60-frame video)
  b2: 2 decoder layers + 1 vision layer                   (text and CT again: the per-layer slope)
Full 7B (28 layers) is extrapolated linearly from the two slices, t(L) = t(2) + (L - 2) (t(4) - t(2)) / 2, and
its bytes per token the same way from the decoder graphs' weight bytes; the report shows every term.
Every number in the outputs comes from a run in this invocation; nothing is filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FULL_LAYERS = 28  # Hulu-Med-7B decoder (Qwen2.5-7B)
BUNDLES = {
    "b4": ["--layers", "4", "--vision-layers", "27"],
    "b2": ["--layers", "2", "--vision-layers", "1"],
}
COMMON_BUILD = ["--size", "7b", "--random-weights", "--seed", "0", "--precision", "fp16", "--target", "h200",
                "--decoder-form", "v1-concat", "--decoder-form", "gqa-static"]
# name -> (bundle, bench args, compare with the reference on CUDA, timeout s)
BENCHES: dict[str, tuple[str, list[str], bool, int]] = {
    "text_b4": ("b4", ["--preset", "text", "--max-new-tokens", "128"], True, 120),
    "text_b2": ("b2", ["--preset", "text", "--max-new-tokens", "128"], True, 90),
    "ct160_b4": ("b4", ["--preset", "volume", "--frames", "160", "--resolution", "512",
                        "--max-new-tokens", "32"], True, 150),
    "video60_b4": ("b4", ["--preset", "video", "--frames", "60", "--resolution", "640",
                          "--max-new-tokens", "32"], True, 120),
    "text_b4_v1": ("b4", ["--preset", "text", "--max-new-tokens", "128", "--decoder-form", "v1-concat"], False, 90),
    "text_b4_nograph": ("b4", ["--preset", "text", "--max-new-tokens", "128", "--no-cuda-graph"], False, 90),
    "ct160_b2": ("b2", ["--preset", "volume", "--frames", "160", "--resolution", "512",
                        "--max-new-tokens", "8"], False, 120),
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "runtime"), str(ROOT / "tests")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _huluexport(args: list[str], log: Path, timeout: int) -> int:
    cmd = [sys.executable, "-c", "import sys; from huluexport.cli import main; sys.exit(main())", *args]
    with open(log, "a") as f:
        f.write(f"\n$ huluexport {' '.join(args)}\n")
        f.flush()
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), timeout=timeout,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            f.write(f"TIMEOUT after {timeout} s\n")
            return 124


# --------------------------------------------------------------------------------------------------
# build (CPU; started with setsid in the first device call so it runs while the wheel parts arrive)
# --------------------------------------------------------------------------------------------------


def build(work: Path) -> int:
    bdir = work / "bundles"
    bdir.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    status = 0
    with open(log, "a") as f:  # the token-reduction kernels for the CUDA path (hulurt.device_reduce), sm_90
        rc = subprocess.run(["make", "-C", "kernels", "lib", "ARCHS=90", "NVCC_THREADS=8", f"PYTHON={sys.executable}"],
                            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        f.write(f"BUILT kernels rc={rc}\n")
    for name, extra in BUNDLES.items():
        if (bdir / name / "manifest.json").is_file():
            continue
        t0 = time.time()
        rc = _huluexport(["build", *COMMON_BUILD, *extra, "--out", str(bdir / name), "--overwrite"], log, 1500)
        with open(log, "a") as f:
            f.write(f"BUILT {name} rc={rc} in {time.time() - t0:.0f} s\n")
        status |= rc
    # the tiny bundles tests/gpu uses (tests/e2e/bundles.py caches them here)
    code = "from e2e.bundles import bundle; print(bundle('qwen2', gqa=True)); print(bundle('qwen3', gqa=True))"
    env = _env() | {"HULU_TEST_BUNDLES": str(work / "test-bundles")}
    with open(log, "a") as f:
        rc = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
        f.write(f"BUILT tiny rc={rc}\nBUILD DONE status={status | rc}\n")
    return status | rc


# --------------------------------------------------------------------------------------------------
# measure (GPU)
# --------------------------------------------------------------------------------------------------


def copy_bandwidth(gib: float = 4.0, repeats: int = 20) -> dict[str, Any]:
    """Device-to-device copy through PyTorch, CUDA events, median of `repeats` after 3 warm-ups; bytes read +
    bytes written counted (docs/gpu.md)."""
    import torch

    n = int(gib * 2**30) // 2
    src = torch.randn(n, dtype=torch.float16, device="cuda")  # random, not zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    assert torch.equal(dst, src)
    times.sort()
    med = times[len(times) // 2]
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes_moved": nbytes, "median_s": med, "min_s": times[0], "bandwidth_bytes_s": nbytes / med,
            "method": f"torch copy_ of {gib:g} GiB fp16 random data, CUDA events, median of {repeats}, read+write"}


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem",
         "--format=csv,noheader"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nvidia_smi": smi,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
        "providers": ort.get_available_providers(),
        "python": sys.version.split()[0],
        "load": os.getloadavg(),
    }


def _wait_for_bundles(work: Path, limit_s: float) -> None:
    t0 = time.time()
    while time.time() - t0 < limit_s:
        log = work / "build.log"
        if log.is_file() and "BUILD DONE" in log.read_text():
            return
        time.sleep(5)
    print(f"bundles not done after {limit_s:.0f} s; measuring what exists", flush=True)


GPU_TESTS = "gpu_tests"  # where the GPU tests run in the order of BENCHES (after the four main benches)


def measure(work: Path, out: Path, only: list[str] | None, budget_s: float) -> int:
    """Everything in one call, most important first; a step that would start past `budget_s` is skipped and
    recorded as skipped, so the command ends inside the device tool's 600 s limit with its results written."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    res = work / "results"
    res.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_bench.log"
    result: dict[str, Any] = {"environment": environment()}
    print(json.dumps(result["environment"], indent=1), flush=True)
    result["copy"] = copy_bandwidth()
    print(f"copy bandwidth: {result['copy']['bandwidth_bytes_s'] / 1e12:.2f} TB/s", flush=True)
    _save(out, result)
    _wait_for_bundles(work, max(30.0, budget_s / 2 - (time.time() - start)))
    result["benches"] = {}
    order = list(BENCHES)
    order.insert(4, GPU_TESTS)
    for name in order:
        if only and name not in only:
            continue
        left = budget_s - (time.time() - start)
        if left < 30:
            result.setdefault("skipped", []).append(name)
            print(f"{name}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        if name == GPU_TESTS:
            result["gpu_tests_rc"] = _gpu_tests(work, out, int(min(240, left)))
            _save(out, result)
            continue
        bundle, args, compare, timeout = BENCHES[name]
        timeout = int(min(timeout, left))
        b = work / "bundles" / bundle
        if not (b / "manifest.json").is_file():
            result["benches"][name] = {"error": f"bundle {bundle} missing"}
            continue
        js = res / f"{name}.json"
        cmd = ["bench", str(b), *args, "--provider", "cuda", "--target", "h200", "--warmup", "1", "--repeats", "3",
               "--json", str(js)]
        if compare:
            cmd += ["--compare-reference", "--reference-device", "cuda"]
        t0 = time.time()
        rc = _huluexport(cmd, log, timeout)
        entry: dict[str, Any] = {"rc": rc, "wall_s": round(time.time() - t0, 1), "args": cmd[2:]}
        if js.is_file():
            entry["report"] = json.loads(js.read_text())
        result["benches"][name] = entry
        print(f"{name}: rc={rc} in {entry['wall_s']} s", flush=True)
        _save(out, result)
    report(result, out)
    return 0


def _gpu_tests(work: Path, out: Path, timeout: int) -> int:
    """tests/gpu on the tiny bundles the build step cached."""
    env = _env() | {"HULU_TEST_BUNDLES": str(work / "test-bundles")}
    with open(out / "pytest_gpu.log", "w") as f:
        try:
            return subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "tests/gpu"],
                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            f.write(f"TIMEOUT after {timeout} s\n")
            return 124


def _save(out: Path, result: dict[str, Any]) -> None:
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _med(rep: dict[str, Any], side: str, stage: str) -> float | None:
    try:
        return float(rep["sides"][side]["stages"][stage]["median"])
    except (KeyError, TypeError):
        return None


def _tok_s(rep: dict[str, Any], side: str) -> float | None:
    try:
        return float(rep["sides"][side]["roofline"]["measured_tok_s"])
    except (KeyError, TypeError):
        return None


def extrapolate(r2: dict[str, Any], r4: dict[str, Any], side: str, bw: float) -> dict[str, Any] | None:
    """Per-token decode time and bytes of the 28-layer model from the 2- and 4-layer slices (linear in L)."""
    s2, s4 = _tok_s(r2, side), _tok_s(r4, side)
    if not s2 or not s4:
        return None
    t2, t4 = 1 / s2, 1 / s4
    per_layer = (t4 - t2) / 2
    t28 = t2 + (FULL_LAYERS - 2) * per_layer
    piece = "decoder_gqa" if "decoder_gqa" in r4["sides"][side].get("description", "") else "decoder"
    if side == "reference":  # the reference reads the same fp16 matrices; count them from the runtime's graph
        piece = "decoder"
    w2 = r2["bundle"]["piece_weight_bytes"][piece]
    w4 = r4["bundle"]["piece_weight_bytes"][piece]
    emb_row = r4["bundle"]["piece_weight_bytes"]["embed"] / r4["bundle"]["dims"]["vocab"]
    layer_bytes = (w4 - w2) / 2
    w28 = w2 + (FULL_LAYERS - 2) * layer_bytes + emb_row
    kv_per_layer = r4["sides"][side]["roofline"]["kv_bytes_per_token_at_mean_context"] / r4["bundle"]["dims"]["layers"]
    kv = kv_per_layer * FULL_LAYERS
    bytes28 = w28 + kv
    bound_s = bytes28 / bw
    return {
        "t2_ms": t2 * 1e3, "t4_ms": t4 * 1e3, "per_layer_ms": per_layer * 1e3, "t28_ms": t28 * 1e3,
        "tok_s_28": 1 / t28, "weights_2": w2, "weights_4": w4, "layer_bytes": layer_bytes,
        "embed_row_bytes": emb_row, "kv_bytes_28": kv, "bytes_per_token_28": bytes28,
        "bound_ms": bound_s * 1e3, "fraction_of_bound": bound_s / t28,
    }


def report(result: dict[str, Any], out: Path) -> None:
    env, copy = result.get("environment", {}), result.get("copy", {})
    bw = float(copy.get("bandwidth_bytes_s", 0.0))
    B = {k: v.get("report") for k, v in result.get("benches", {}).items() if v.get("report")}
    lines = ["# hulurt on a CUDA GPU vs the PyTorch reference (fp16, batch 1)", "",
             (f"Machine: {env.get('gpu')} ({env.get('nvidia_smi')}), onnxruntime {env.get('onnxruntime')} "
             f"({', '.join(env.get('providers', []))}), torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"python {env.get('python')}, load {env.get('load')}, date {env.get('date_utc')}."),
             f"Measured device-to-device copy bandwidth: {bw / 1e12:.3f} TB/s ({copy.get('method')}).",
             ("Random weights (seed 0), 7B width; b4 = 4 decoder layers + 27 vision layers, b2 = 2 + 1. "
             "Greedy, no stop ids; medians of 3 runs after 1 warm-up, runtime and reference interleaved in one "
             "process."), ""]
    lines += ["## Runs", "", ("| run | side | decode tok/s | TTFT ms | vision ms | prefill ms | prompt tok | "
              "visual tok | same tokens |"), "|---|---|---|---|---|---|---|---|---|"]
    for name, rep in B.items():
        for side in ("runtime", "reference"):
            if side not in rep["sides"]:
                continue
            t = rep["sides"][side]["tokens"]
            lines.append(
                f"| {name} | {side}: {rep['sides'][side]['description']} | {(_tok_s(rep, side) or 0):.1f} | "
                f"{(_med(rep, side, 'ttft') or 0) * 1e3:.1f} | {(_med(rep, side, 'vision') or 0) * 1e3:.1f} | "
                f"{(_med(rep, side, 'prefill') or 0) * 1e3:.1f} | {t['prompt']} | "
                f"{t['visual_before_reduction']} -> {t['visual_after_reduction']} | {rep.get('same_tokens')} |")
    for name, v in result.get("benches", {}).items():
        if not v.get("report"):
            lines.append(f"| {name} | FAILED rc={v.get('rc')} {v.get('error', '')} | | | | | | | |")
    ext = {}
    if "text_b2" in B and "text_b4" in B and bw:
        lines += ["", "## Full 7B (28 layers) extrapolated from the 2- and 4-layer slices", ""]
        for side in ("runtime", "reference"):
            e = extrapolate(B["text_b2"], B["text_b4"], side, bw)
            if e is None:
                continue
            ext[side] = e
            lines += [
                (f"**{side}**: t(2) = {e['t2_ms']:.3f} ms, t(4) = {e['t4_ms']:.3f} ms per token; per layer "
                f"(t(4) - t(2)) / 2 = {e['per_layer_ms']:.4f} ms; t(28) = t(2) + 26 x {e['per_layer_ms']:.4f} = "
                f"{e['t28_ms']:.3f} ms -> {e['tok_s_28']:.1f} tok/s."),
                (f"Bytes per token: decoder weights W(2) = {e['weights_2'] / 1e9:.4f} GB, W(4) = "
                f"{e['weights_4'] / 1e9:.4f} GB, per layer {e['layer_bytes'] / 1e6:.2f} MB; W(28) = W(2) + 26 x "
                f"layer + embedding row {e['embed_row_bytes']:.0f} B; KV read at the mean context "
                f"{e['kv_bytes_28'] / 1e6:.3f} MB; total {e['bytes_per_token_28'] / 1e9:.4f} GB."),
                (f"Bound = {e['bytes_per_token_28'] / 1e9:.4f} GB / {bw / 1e12:.3f} TB/s = {e['bound_ms']:.3f} ms; "
                f"fraction of the bandwidth bound reached = {e['bound_ms']:.3f} / {e['t28_ms']:.3f} = "
                f"**{100 * e['fraction_of_bound']:.1f} %** (target >= 85 % for the runtime)."), ""]
        if "runtime" in ext and "reference" in ext:
            ratio = ext["runtime"]["tok_s_28"] / ext["reference"]["tok_s_28"]
            lines.append(f"Runtime over PyTorch eager fp16, 28 layers: {ratio:.2f}x.")
    for name in ("ct160_b4", "video60_b4"):
        rep = B.get(name)
        if rep:
            lines += ["", f"TTFT split, {name}: " + "; ".join(
                f"{side} vision {(_med(rep, side, 'vision') or 0) * 1e3:.0f} ms + prefill "
                f"{(_med(rep, side, 'prefill') or 0) * 1e3:.0f} ms of TTFT "
                f"{(_med(rep, side, 'ttft') or 0) * 1e3:.0f} ms"
                for side in rep["sides"])]
    if "ct160_b2" in B and "ct160_b4" in B:
        p2, p4 = _med(B["ct160_b2"], "runtime", "prefill"), _med(B["ct160_b4"], "runtime", "prefill")
        if p2 and p4:
            p28 = p2 + (FULL_LAYERS - 2) * (p4 - p2) / 2
            lines.append(f"Runtime CT prefill, 28 layers: {p2 * 1e3:.1f} + 26 x ({p4 * 1e3:.1f} - {p2 * 1e3:.1f}) / 2"
                         f" = {p28 * 1e3:.1f} ms.")
    lines += ["", f"GPU tests (tests/gpu) exit status: {result.get('gpu_tests_rc')} (log: pytest_gpu.log)."]
    result["extrapolation"] = ext
    _save(out, result)
    (out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    _plot(B, ext, out / "gpu_bench.png")


def _plot(B: dict[str, Any], ext: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [n for n in ("text_b2", "text_b4") if n in B]
    for i, side in enumerate(("runtime", "reference")):
        vals = [(_tok_s(B[n], side) or 0) for n in names]
        axes[0].bar([j + 0.4 * i for j in range(len(names))], vals, width=0.4, label=side)
    if ext:
        axes[0].bar([len(names) + 0.4 * i for i, s in enumerate(("runtime", "reference")) if s in ext],
                    [ext[s]["tok_s_28"] for s in ("runtime", "reference") if s in ext], width=0.4, hatch="//")
    axes[0].set_xticks(range(len(names) + 1), [*names, "28 layers (extrap.)"])
    axes[0].set_ylabel("decode tokens/s")
    axes[0].legend()
    rows = [(n, s) for n in ("ct160_b4", "video60_b4") if n in B for s in B[n]["sides"]]
    for k, (n, s) in enumerate(rows):
        v, p = (_med(B[n], s, "vision") or 0) * 1e3, (_med(B[n], s, "prefill") or 0) * 1e3
        axes[1].barh(k, v, color="tab:blue")
        axes[1].barh(k, p, left=v, color="tab:orange")
    axes[1].set_yticks(range(len(rows)), [f"{n} {s}" for n, s in rows])
    axes[1].set_xlabel("ms (blue vision, orange prefill)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("build", "measure", "report"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/hulu-gpu"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/hulu-gpu/out")))
    ap.add_argument("--only", nargs="*", help=f"steps (default: all of {[*BENCHES, GPU_TESTS]})")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds after which no step starts (measure)")
    a = ap.parse_args(argv)
    if a.step == "build":
        return build(a.work)
    if a.step == "measure":
        return measure(a.work, a.out, a.only, a.budget)
    report(json.loads((a.out / "gpu_bench.json").read_text()), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
