"""Sampling one token where the logits are: the sampling graph on the decoder's provider (hulurt.device_sample)
vs bringing the row to the host and running hulurt's numpy Sampler, side by side in one process.

The gqa-static decoder leaves its logits row [1, 152064] float32 in a buffer on its device. A sampled token then
costs either
- host: copy the row to the host (608 KB; a view on the CPU provider, copied as the runtime copies it) and run
  `hulurt.sampling.Sampler` on it, or
- device: run hulurt/graphs/sampler.onnx over the buffer in place (`DeviceSampler`) and copy back 9 bytes; rows
  the graph cannot sample exactly go to the host with the same uniform number (counted, and timed as they run).
Before timing, both sides draw the same token from every row for the same uniform number (else the script
stops). Rows and sampling settings are those of benchmarks/bench_sampling.py. Writes
benchmarks/results/device_sampling_<provider>.{md,json} (or under --out).

    .venv/bin/python benchmarks/bench_device_sampling.py [--provider cpu|cuda] [--calls 30] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bench_sampling import VOCAB, cases, seen_ids
from hulurt.backends.base import BackendOptions
from hulurt.device_sample import DeviceSampler
from hulurt.sampling import Sampler, SamplingConfig

from huluexport.bench.report import cpu_model

RESULTS = Path(__file__).parent / "results"


class Sides:
    """Both ways of sampling the row held in one logits buffer on `device`."""

    def __init__(self, provider: str, device: str) -> None:
        self.device = device
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type([1, VOCAB], np.float32, device, 0)
        self.graph = DeviceSampler(BackendOptions(provider=provider), self.logits, VOCAB)

    def load(self, row: np.ndarray) -> None:
        """The decoder's step, as far as sampling sees it: the row is in the buffer (not timed)."""
        self.logits.update_inplace(row.reshape(1, -1))

    def host(self, sampler: Sampler, seen: np.ndarray) -> int:
        row = self.logits.numpy()
        return sampler(np.array(row, copy=True) if self.device == "cpu" else row, seen)


def measure(sides: Sides, data: list[np.ndarray], cfg: SamplingConfig, seen: np.ndarray, repeats: int
            ) -> dict[str, dict[str, float]]:
    """Per call (ms): median and best of the per-pass means, round-robin; the row load is outside the clock."""
    ways = {"host": sides.host, "device": sides.graph}
    wall: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for k, fn in ways.items():
            sampler, spent = Sampler(cfg), 0.0
            for r in data:
                sides.load(r)
                t0 = time.perf_counter()
                fn(sampler, seen)
                spent += time.perf_counter() - t0
            wall[k].append(spent / len(data) * 1e3)
    return {k: {"best_ms": min(v), "median_ms": float(np.median(v))} for k, v in wall.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--calls", type=int, default=30, help="rows per pass")
    ap.add_argument("--repeats", type=int, default=5, help="round-robin passes")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the .md/.json")
    args = ap.parse_args()
    device = "cuda" if args.provider == "cuda" else "cpu"
    sides = Sides(args.provider, device)
    if sides.graph.session.provider != args.provider:
        raise SystemExit(f"the sampling graph opened on {sides.graph.session.provider}, not {args.provider}")
    seen = seen_ids()
    results: list[dict[str, Any]] = []
    for kind, data, name, cfg in cases(args.calls):
        a, b = Sampler(cfg), Sampler(cfg)
        host_rows = sides.graph.host_rows
        for r in data:  # same seed, same rule, same row -> the same token, or the timing means nothing
            sides.load(r)
            want, got = sides.host(a, seen), sides.graph(b, seen)
            if want != got:
                raise SystemExit(f"{kind} {name}: the host drew {want} but the device path drew {got}")
        fallback = sides.graph.host_rows - host_rows
        t = measure(sides, data, cfg, seen, args.repeats)
        results.append({"rows": kind, "config": name, "host_fallback_rows": fallback, "rows_checked": len(data),
                        "sides": t, "speedup": t["host"]["median_ms"] / t["device"]["median_ms"]})
        print(f"{kind:6s} {name:34s} fallback {fallback:>3d}/{len(data)}  " + "  ".join(
            f"{k} {v['median_ms']:.3f} ms" for k, v in t.items()))
    gpu = ""
    if device == "cuda":
        import subprocess

        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, check=False).stdout.strip()
    load = os.getloadavg()
    meta = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores" + (f"; {gpu}" if gpu else ""),
        "provider": args.provider, "onnxruntime": ort.__version__, "python": platform.python_version(),
        "numpy": np.__version__, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_1min_end": load[0], "vocab": VOCAB, "calls": args.calls, "repeats": args.repeats,
        "seen_tokens": int(seen.shape[0]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"device_sampling_{args.provider}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        f"# One sampled token from a logits buffer on `{args.provider}`: the sampling graph vs the host sampler",
        "",
        f"Machine: {meta['machine']}; onnxruntime {meta['onnxruntime']} ({args.provider} provider), Python "
        f"{meta['python']}, numpy {meta['numpy']}. Date: {meta['date']}; 1-min load average {load[0]:.2f} at the "
        f"end. One process, the two ways round-robin, {args.repeats} passes of {args.calls} rows of {VOCAB:,} "
        f"logits each, a {meta['seen_tokens']}-token history for the repetition penalty. Milliseconds per token, "
        "median of the passes (best in brackets); putting the row into the buffer is not timed.",
        "host: the row to the host, then hulurt.sampling.Sampler; device: hulurt/graphs/sampler.onnx over the "
        "buffer (hulurt.device_sample), rows it cannot sample exactly then on the host (\"fallback\").",
        "Before timing, both drew the same token from every row with the same seed.",
        f"Command: `.venv/bin/python benchmarks/bench_device_sampling.py --provider {args.provider}`.",
        "",
        "| rows | sampling | fallback rows | host ms | device ms | host / device |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["sides"]
        lines.append(f"| {r['rows']} | {r['config']} | {r['host_fallback_rows']}/{r['rows_checked']} | "
                     f"{s['host']['median_ms']:.3f} ({s['host']['best_ms']:.3f}) | "
                     f"{s['device']['median_ms']:.3f} ({s['device']['best_ms']:.3f}) | **{r['speedup']:.2f}x** |")
    lines.append("")
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
