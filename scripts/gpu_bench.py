"""Driver of scripts/gpu_bench.sh (docs/gpu.md): builds the random-weight bundles, measures on a CUDA GPU with
onnxruntime-gpu, and writes one JSON, one Markdown and one PNG report.

    python3 scripts/gpu_bench.py build   --work /tmp/hulu-gpu              # CPU only: bundles + tiny test bundles
    python3 scripts/gpu_bench.py measure --work /tmp/hulu-gpu --out $OUT  # GPU: bandwidth, benches, tests, sampling
    python3 scripts/gpu_bench.py report  --work /tmp/hulu-gpu --out DIR   # report again from the saved JSON
    python3 scripts/gpu_bench.py measure --rehearse-cpu --work W --out DIR  # CPU rehearsal: no GPU figure

The CPU rehearsal (docs/gpu.md) runs `measure`'s steps in the same order through the same code (huluexport bench,
tests/gpu, report, extrapolation, plot) on onnxruntime's CPU provider, the reference on the CPU in fp16, small
inputs and the host's copy bandwidth: it checks that the sequence works in the device's package versions before
the one GPU session, and measures nothing about a GPU; its report says so in its title.

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

from gpu_bench_report import report, save  # scripts/ (this file's folder) is first on sys.path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {
    "b4": ["--layers", "4", "--vision-layers", "27"],
    "b2": ["--layers", "2", "--vision-layers", "1"],
}
# name -> (source bundle, `huluexport quantize` options): built after the tiny bundles. Only the gqa-static form,
# the one hulurt runs on CUDA, is quantized (weight-only int4, MatMulNBits block 32; docs/gpu.md)
QUANTIZED = {"b4_int4": ("b4", ["--bits", "4", "--piece", "decoder_gqa"])}
COMMON_BUILD = ["--size", "7b", "--random-weights", "--seed", "0", "--precision", "fp16", "--target", "h200",
                "--decoder-form", "v1-concat", "--decoder-form", "gqa-static"]
# name -> (bundle, bench args, compare with the reference on CUDA, timeout s). A timeout only stops a hung step; the
# budget left caps it too. Loading dominates: the b4 reference (random init on the CPU) took 30-40 s on the 2-core VM.
BENCHES: dict[str, tuple[str, list[str], bool, int]] = {
    "text_b4": ("b4", ["--preset", "text", "--max-new-tokens", "128"], True, 180),
    "text_b2": ("b2", ["--preset", "text", "--max-new-tokens", "128"], True, 150),
    "ct160_b4": ("b4", ["--preset", "volume", "--frames", "160", "--resolution", "512",
                        "--max-new-tokens", "32"], True, 240),
    "video60_b4": ("b4", ["--preset", "video", "--frames", "60", "--resolution", "640",
                          "--max-new-tokens", "32"], True, 200),
    # the same slice with int4 weights: the decode form for GPUs too small for a model's fp16 weights
    "text_b4_int4": ("b4_int4", ["--preset", "text", "--max-new-tokens", "128"], False, 150),
    "text_b4_v1": ("b4", ["--preset", "text", "--max-new-tokens", "128", "--decoder-form", "v1-concat"], False, 120),
    "text_b4_nograph": ("b4", ["--preset", "text", "--max-new-tokens", "128", "--no-cuda-graph"], False, 120),
    "ct160_b2": ("b2", ["--preset", "volume", "--frames", "160", "--resolution", "512",
                        "--max-new-tokens", "8"], False, 150),
    # the CT's TTFT with the visual rows gathered on the host (before hulurt.device_rows), against ct160_b4
    "ct160_b4_hostrows": ("b4", ["--preset", "volume", "--frames", "160", "--resolution", "512",
                                 "--max-new-tokens", "8", "--host-rows"], False, 200),
}

GPU_TESTS = "gpu_tests"  # where the GPU tests run in the order of BENCHES (after the four main benches)
SAMPLING = "sampling"  # benchmarks/bench_device_sampling.py on the provider (after the GPU tests): a sampled token
# drawn by the sampling graph on the device vs the row copied to the host sampler; per token, round-robin
SAMPLING_ARGS = ["--calls", "20", "--repeats", "3"]
# the CPU rehearsal's inputs: each of these bench options capped at this value (other options as in BENCHES)
REHEARSAL_CAPS = {"--max-new-tokens": 4, "--frames": 4, "--resolution": 112}
REHEARSAL_TIMEOUT_S = 900  # per bench on a loaded 2-core host (loading a b4 side alone takes ~40 s there)


def bench_command(name: str, bundle: Path, js: Path, rehearse: bool) -> tuple[list[str], int]:
    """The `huluexport bench` arguments and timeout of step `name`: on the GPU as BENCHES says; in the CPU
    rehearsal the same options with REHEARSAL_CAPS applied, the gqa-static form forced where BENCHES leaves the
    choice to hulurt.load (it picks gqa-static on CUDA, v1 on the CPU), the CPU provider, this host's target and
    the reference on the CPU in fp16 (the GPU baseline's dtype), run after the runtime rather than interleaved."""
    _, args, compare, timeout = BENCHES[name]
    args = list(args)
    if rehearse:
        for i in range(len(args) - 1):
            if args[i] in REHEARSAL_CAPS:
                args[i + 1] = str(min(int(args[i + 1]), REHEARSAL_CAPS[args[i]]))
        if "--decoder-form" not in args:
            args += ["--decoder-form", "gqa-static"]
        timeout = max(timeout, REHEARSAL_TIMEOUT_S)
    device, target = ("cpu", "cpu") if rehearse else ("cuda", "h200")
    cmd = ["bench", str(bundle), *args, "--provider", device, "--target", target, "--warmup", "1", "--repeats", "3",
           "--json", str(js)]
    if compare:
        cmd += ["--compare-reference", "--reference-device", device]
        if rehearse:  # sequential: b4 on the CPU provider (7.6 GiB of RSS) and then the fp16 reference (8.9 GiB
            # for the process at most) keep this host under ~12 GB; interleaved, 15.6 GiB (docs/gpu.md)
            cmd += ["--reference-dtype", "float16", "--sequential"]
    return cmd, timeout


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
    """Kernels, b4, b2, the tiny test bundles. The log gets "BUILD START pid=N" first and "BUILD DONE status=N"
    last whatever happens in between (`measure` waits for that line, or for this process to end)."""
    bdir = work / "bundles"
    bdir.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    with open(log, "a") as f:
        f.write(f"BUILD START pid={os.getpid()}\n")
    status = 1
    try:
        status = _build_steps(bdir, log, work)
    finally:
        with open(log, "a") as f:
            f.write(f"BUILD DONE status={status}\n")
    return status


def _bundle_step(bdir: Path, log: Path, name: str, args: list[str], timeout: int) -> int:
    """`huluexport ARGS --out bdir/name` unless that bundle is there already; "BUILT <name> rc=N" in the log."""
    if (bdir / name / "manifest.json").is_file():
        with open(log, "a") as f:
            f.write(f"BUILT {name} rc=0 (there already)\n")
        return 0
    t0 = time.time()
    rc = _huluexport([*args, "--out", str(bdir / name), "--overwrite"], log, timeout)
    with open(log, "a") as f:
        f.write(f"BUILT {name} rc={rc} in {time.time() - t0:.0f} s\n")
    return rc


def _build_steps(bdir: Path, log: Path, work: Path) -> int:
    """b4 and b2 first (`measure` starts a bench as soon as its bundle is built), then the sm_90 kernels and the
    tiny bundles that only tests/gpu (the fifth step) needs, then b4's int4 copy (QUANTIZED)."""
    status = 0
    for name, extra in BUNDLES.items():
        status |= _bundle_step(bdir, log, name, ["build", *COMMON_BUILD, *extra], 1500)
    with open(log, "a") as f:  # the token-reduction kernels for the CUDA path (hulurt.device_reduce), sm_90
        try:
            rc = subprocess.run(["make", "-C", "kernels", "lib", "ARCHS=90", "NVCC_THREADS=8",
                                 f"PYTHON={sys.executable}"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                check=False).returncode
        except OSError as e:  # no make: hulurt reduces with numpy without the library; tests/gpu say so
            f.write(f"make: {e}\n")
            rc = 127
        f.write(f"BUILT kernels rc={rc}\n")
    # the tiny bundles tests/gpu uses (tests/e2e/bundles.py caches them here)
    # fp16 (the CUDA gqa-static path) for both flavours, fp32 qwen2 (CUDA keeps fp32 bundles on v1)
    code = ("from e2e.bundles import bundle; print(bundle('qwen2', gqa=True, precision='fp16')); "
            "print(bundle('qwen3', gqa=True, precision='fp16')); print(bundle('qwen2', gqa=True))")
    env = _env() | {"HULU_TEST_BUNDLES": str(work / "test-bundles")}
    with open(log, "a") as f:
        rc = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
        f.write(f"BUILT tiny rc={rc}\n")
    status |= rc
    for name, (src, extra) in QUANTIZED.items():
        status |= _bundle_step(bdir, log, name, ["quantize", str(bdir / src), *extra], 900)
    return status


# --------------------------------------------------------------------------------------------------
# measure (GPU)
# --------------------------------------------------------------------------------------------------


def copy_bandwidth(gib: float = 4.0, repeats: int = 20, device: str = "cuda") -> dict[str, Any]:
    """Device-to-device copy through PyTorch, CUDA events, median of `repeats` after 3 warm-ups; bytes read +
    bytes written counted (docs/gpu.md). device="cpu" (the CPU rehearsal): the same copy in host memory, timed
    by the host clock, and labelled as the host's."""
    import torch

    n = int(gib * 2**30) // 2
    src = torch.randn(n, dtype=torch.float16, device=device)  # random, not zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    assert torch.equal(dst, src)
    times.sort()
    med = times[len(times) // 2]
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()
        how = "CUDA events"
    else:
        how = "HOST memory (CPU rehearsal, not a GPU figure), host clock"
    return {"bytes_moved": nbytes, "median_s": med, "min_s": times[0], "bandwidth_bytes_s": nbytes / med,
            "device": device,
            "method": f"torch copy_ of {gib:g} GiB fp16 random data, {how}, median of {repeats}, read+write"}


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem",
             "--format=csv,noheader"], capture_output=True, text=True, check=False, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        smi = f"nvidia-smi: {e}"
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nvidia_smi": smi,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (torch sees no CUDA device)",
        "onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
        "providers": ort.get_available_providers(),
        "python": sys.version.split()[0],
        "packages": _versions(("numpy", "onnx", "onnxscript", "onnx_ir", "transformers", "safetensors", "tokenizers")),
        "cpu_count": os.cpu_count(),
        "load": os.getloadavg(),
    }


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    import importlib

    out = {}
    for n in names:
        try:
            out[n] = str(getattr(importlib.import_module(n), "__version__", "?"))
        except ImportError as e:
            out[n] = f"missing ({e})"
    return out


def build_state(work: Path) -> tuple[str, set[str]]:
    """(state, what the latest build in build.log has finished: "BUILT <name>" lines). state: "done", "running",
    "ended" (the build process is gone without its last line) or "none" (no build was started)."""
    log = work / "build.log"
    text = log.read_text() if log.is_file() else ""
    start = text.rfind("BUILD START pid=")
    last = text[start:] if start >= 0 else text
    built = {line.split()[1] for line in last.splitlines() if line.startswith("BUILT ") and len(line.split()) > 1}
    if "BUILD DONE" in last:
        return "done", built
    if start < 0:
        return "none", built
    pid = int(last.split("=", 1)[1].split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "ended", built
    except PermissionError:
        pass
    return "running", built


def _wait_for(work: Path, needs: tuple[str, ...], deadline: float) -> None:
    """Until the running build has finished `needs` (bundle names, "kernels", "tiny") or `deadline` passes."""
    while True:
        state, built = build_state(work)
        if state != "running" or set(needs) <= built:
            if state in ("ended", "none"):
                print(f"bundle build {state} (no BUILD DONE in build.log); measuring what exists", flush=True)
            return
        if time.time() >= deadline:
            print(f"{', '.join(needs)} not built by the wait limit; measuring what exists", flush=True)
            return
        time.sleep(2)


def measure(work: Path, out: Path, only: list[str] | None, budget_s: float, rehearse: bool = False) -> int:
    """Everything in one call, most important first; a step that would start past `budget_s` is skipped and
    recorded as skipped, so the command ends inside the device tool's 600 s limit with its results written.
    rehearse: the CPU rehearsal (module docstring); same steps, CPU provider, small inputs, no GPU figure."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    res = work / "results"
    res.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_bench.log"
    result: dict[str, Any] = {"mode": "cpu-rehearsal" if rehearse else "gpu", "environment": environment()}
    if rehearse:
        result["rehearsal_caps"] = REHEARSAL_CAPS
    print(json.dumps(result["environment"], indent=1), flush=True)
    smoke = out / "gpu_smoke.log"  # written by gpu_bench.sh just before (scripts/gpu_smoke.py's verdict)
    if smoke.is_file():
        result["smoke"] = " ".join(ln for ln in smoke.read_text().splitlines() if ln.upper().startswith("GPU SMOKE"))
    try:  # a failed step is recorded and the others still run: the GPU session has one chance
        result["copy"] = copy_bandwidth(0.5, 5, "cpu") if rehearse else copy_bandwidth()
        print(f"copy bandwidth: {result['copy']['bandwidth_bytes_s'] / 1e12:.3f} TB/s "
              f"({result['copy']['method']})", flush=True)
    except Exception as e:  # noqa: BLE001 -- recorded in the report; the benches do not need it
        result["copy"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"copy bandwidth FAILED: {result['copy']['error']}", flush=True)
    save(out, result)
    # each step waits for what it needs from the background build, all steps together up to half the budget
    deadline = time.time() + max(30.0, budget_s / 2 - (time.time() - start))
    result["benches"] = {}
    order = list(BENCHES)
    order[4:4] = [GPU_TESTS, SAMPLING]
    for name in order:
        if only and name not in only:
            continue
        if name != SAMPLING:
            _wait_for(work, ("kernels", "tiny") if name == GPU_TESTS else (BENCHES[name][0],), deadline)
        left = budget_s - (time.time() - start)
        if left < 30:
            result.setdefault("skipped", []).append(name)
            print(f"{name}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        if name == GPU_TESTS:
            result["gpu_tests_rc"] = _gpu_tests(work, out, int(min(240, left)))
            save(out, result)
            continue
        if name == SAMPLING:
            result["sampling"] = _sampling(out, "cpu" if rehearse else "cuda", int(min(120, left)))
            save(out, result)
            continue
        bundle = BENCHES[name][0]
        b = work / "bundles" / bundle
        if not (b / "manifest.json").is_file():
            result["benches"][name] = {"error": f"bundle {bundle} missing"}
            continue
        js = res / f"{name}.json"
        js.unlink(missing_ok=True)  # never report an earlier invocation's result
        cmd, timeout = bench_command(name, b, js, rehearse)
        timeout = int(min(timeout, left))
        t0 = time.time()
        rc = _huluexport(cmd, log, timeout)
        entry: dict[str, Any] = {"rc": rc, "wall_s": round(time.time() - t0, 1), "args": cmd[2:]}
        if js.is_file():
            entry["report"] = json.loads(js.read_text())
        result["benches"][name] = entry
        print(f"{name}: rc={rc} in {entry['wall_s']} s", flush=True)
        save(out, result)
    report(result, out)  # the raw results are saved already: `report` can be run again from gpu_bench.json
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


def _sampling(out: Path, provider: str, timeout: int, args: list[str] = SAMPLING_ARGS) -> dict[str, Any]:
    """benchmarks/bench_device_sampling.py on `provider`: its report lands in `out` next to gpu_bench.*."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_device_sampling.py"), "--provider", provider,
           *args, "--out", str(out)]
    with open(out / "sampling.log", "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=_env(), timeout=timeout,
                                check=False).returncode
        except subprocess.TimeoutExpired:
            f.write(f"TIMEOUT after {timeout} s\n")
            rc = 124
    js = out / f"device_sampling_{provider}.json"
    entry: dict[str, Any] = {"rc": rc, "args": cmd[2:]}
    if rc == 0 and js.is_file():
        entry["report"] = json.loads(js.read_text())
    print(f"{SAMPLING}: rc={rc}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("build", "measure", "report"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/hulu-gpu"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/hulu-gpu/out")))
    ap.add_argument("--only", nargs="*", help=f"steps (default: all of {[*BENCHES, GPU_TESTS, SAMPLING]})")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which no step starts (measure; default 540, 3600 with --rehearse-cpu)")
    ap.add_argument("--rehearse-cpu", action="store_true",
                    help="measure: the CPU rehearsal (CPU provider, small inputs; no GPU figure)")
    a = ap.parse_args(argv)
    if a.step == "build":
        return build(a.work)
    if a.step == "measure":
        budget = a.budget if a.budget is not None else (3600.0 if a.rehearse_cpu else 540.0)
        return measure(a.work, a.out, a.only, budget, rehearse=a.rehearse_cpu)
    report(json.loads((a.out / "gpu_bench.json").read_text()), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
