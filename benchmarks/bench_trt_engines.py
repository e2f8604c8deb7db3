"""TensorRT engine builds of the 7B-width 2-layer slice, fp16 and int4 (quantize --format qdq), with the
installed TensorRT (tensorrt-rtx on a CPU-only machine), and the planner's weight bytes against the files.

    huluexport build --size 7b --random-weights --precision fp16 --layers 2 --out B7
    python benchmarks/bench_trt_engines.py B7 --work DIR --json benchmarks/results/trt_engines.json \
        --markdown benchmarks/results/trt_engines.md

Each step runs in its own process under /usr/bin/time -v (wall seconds, peak RSS); per-piece build seconds and
engine bytes come from the engines.json the builder writes. Machine load (uptime) is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) * 1024
    return {"cmd": " ".join(cmd), "wall_s": round(wall, 1), "peak_rss_bytes": rss}


def files_bytes(bundle: Path) -> dict[str, int]:
    m = json.loads((bundle / "manifest.json").read_text())
    out = {}
    for piece, e in m["pieces"].items():
        out[piece] = sum((bundle / f).stat().st_size for f in (e["file"], e["data"]) if f)
    return out


def planned(size: str, layers: int, precision: str) -> dict[str, int]:
    from huluexport.config import SIZES
    from huluexport.export.pipeline import slice_layers
    from huluexport.plan import weight_bytes

    wb = weight_bytes(slice_layers(SIZES[size], layers), precision)
    # pieces: vision = vision tower + projector; embed = the token table; decoder = the rest
    return {"vision": wb.vision + wb.projector, "embed": wb.embed_tokens,
            "decoder": wb.decoder - wb.embed_tokens, "total": wb.total}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path, help="the fp16 7B-width --layers 2 bundle")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (the qdq bundle is written here)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    import tensorrt_rtx as trt

    py = sys.executable
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
                 platform.machine(), "cpus": os.cpu_count(), "module": trt.__name__, "version": trt.__version__,
                 "load_before": uptime(), "runs": {}}
    qdq = args.work / "b7-int4-qdq"
    shutil.rmtree(qdq, ignore_errors=True)
    res["quantize"] = timed([py, "-m", "huluexport.cli", "quantize", str(args.bundle), "--out", str(qdq), "--bits", "4",
                             "--format", "qdq"])
    for name, b in (("fp16", args.bundle), ("int4-qdq", qdq)):
        out = args.work / f"engines-{name}"
        shutil.rmtree(out, ignore_errors=True)
        run = timed([py, "-m", "hulurt.engines", str(b), "--out", str(out)])
        meta = json.loads((out / "engines.json").read_text())
        run["engines"] = {p: {"bytes": e["bytes"], "build_s": e["build_seconds"]} for p, e in meta["engines"].items()}
        files = files_bytes(b)
        plan = planned("7b", args.layers, "fp16" if name == "fp16" else "int4")
        run["files_bytes"] = {**files, "total": sum(files.values())}
        run["planned_bytes"] = plan
        run["planned_vs_files"] = round(plan["total"] / run["files_bytes"]["total"] - 1, 5)
        res["runs"][name] = run
    res["load_after"] = uptime()
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    md = [f"# TensorRT engines of the 7B-width {args.layers}-layer slice ({res['module']} {res['version']}, CPU-only)",
          "",
          (f"{res['date']}, {res['cpus']} cores ({res['machine']}), no GPU: {res['module']} builds ahead of time "
          "(portable engines: compute capability 8.0 and later). Shared machine: other jobs were running."),
          f"Load before: `{res['load_before']}`; after: `{res['load_after']}`.",
          "",
          (f"`huluexport quantize --format qdq` (int4, block 128): {res['quantize']['wall_s']} s, peak RSS "
          f"{res['quantize']['peak_rss_bytes'] / 1e9:.2f} GB."),
          "",
          "| bundle | piece | ONNX files (MB) | planner (MB) | engine (MB) | build (s) |",
          "|---|---|---:|---:|---:|---:|"]
    for name, run in res["runs"].items():
        for piece in ("vision", "embed", "decoder"):
            e = run["engines"][piece]
            md.append(f"| {name} | {piece} | {run['files_bytes'][piece] / 1e6:.1f} | "
                      f"{run['planned_bytes'][piece] / 1e6:.1f} | {e['bytes'] / 1e6:.1f} | {e['build_s']:.1f} |")
        md.append(f"| {name} | **all** | {run['files_bytes']['total'] / 1e6:.1f} | "
                  f"{run['planned_bytes']['total'] / 1e6:.1f} | "
                  f"{sum(e['bytes'] for e in run['engines'].values()) / 1e6:.1f} | {run['wall_s']} (process) |")
    md += ["", "Planner (`huluexport plan` weight model) vs the bundle's ONNX files: "
           + ", ".join(f"{n} {r['planned_vs_files'] * 100:+.2f} %" for n, r in res["runs"].items()) + ".",
           "Peak RSS of the engine builds: " + ", ".join(f"{n} {r['peak_rss_bytes'] / 1e9:.2f} GB"
                                                        for n, r in res["runs"].items()) + "."]
    text = "\n".join(md) + "\n"
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
