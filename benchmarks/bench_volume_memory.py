"""Where a volume request's memory goes (issue 16 item 5): the numbers behind hulurt.schedule's ORT_CPU_VISION_*
terms, the session settings in runtime/hulurt/backends/ort.py and the token reduction's passes
(hulurt.reduction.DIFF_PASS_VALUES).

1. onnxruntime's own accounting, per node (profiler `mem_in_use_delta` / `mem_in_use_peak`), for one vision call
   of 1, 4 and 16 frames of 400 patches (a 512x512 slice of a 160-slice CT at upstream's budget), beside the
   cost model.
2. Peak and retained RSS over two identical 16-frame calls under three session settings: onnxruntime's
   defaults (arena + memory patterns), patterns off, patterns off + arena shrinkage after every call (what
   hulurt opens the vision piece with).
3. The token reduction's keep mask over the 160-slice CT's patches ([160, 100, 2352] fp32, bf16 mode): traced
   peak (numpy allocations, tracemalloc) with the whole input in one pass and in the default passes.
4. Opening the bundle's sessions with hulurt's session options: RSS before, peak and after each piece,
   with onnxruntime's weight prepacking on (hulurt's setting) and off (`session.disable_prepacking`).

Each case runs in a fresh process. Writes benchmarks/results/volume_memory.{md,json}:

    python benchmarks/bench_volume_memory.py /work/big/b7l2
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

RESULTS = Path(__file__).parent / "results"

PROFILE = r"""
import json, sys
import numpy as np, onnxruntime as ort
from hulurt import schedule
from hulurt.rope import vision_rope
bundle, frames = sys.argv[1], int(sys.argv[2])
man = json.load(open(bundle + "/manifest.json"))
shape = schedule.ModelShape.from_manifest_model(man["model"], man["dims"]["patch_dim"])
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.enable_mem_pattern = False
so.enable_profiling = True
so.profile_file_prefix = sys.argv[3]
s = ort.InferenceSession(bundle + "/vision.onnx", sess_options=so, providers=["CPUExecutionProvider"])
cos, sin = vision_rope(20, 20, 2, man["dims"]["vision_head_dim"])
x = np.random.default_rng(0).standard_normal((frames, 100, 4, shape.patch_dim)).astype(np.float32)
s.run(None, {"pixel_patches": x, "rope_cos": cos, "rope_sin": sin})
path = s.end_profiling()
ev = json.load(open(path))
os_remove = __import__("os").remove; os_remove(path)
nodes = [e for e in ev if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
base = int(nodes[0]["args"]["mem_bytes_in_use"])
peak = max(int(e["args"]["mem_in_use_peak"]) for e in nodes)
grew = [(e["args"]["op_name"], e["name"][: -len("_kernel_time")], int(e["args"]["mem_in_use_delta"]))
        for e in nodes if int(e["args"]["mem_in_use_delta"]) > 0]
model = schedule.vision_activation_bytes(shape, frames, 400, 0, 4, False)["total"] - x.nbytes
print(json.dumps({"frames": frames, "peak": peak - base, "model": model, "grew": grew,
                  "h": frames * 400 * shape.vision_hidden * 4, "score": frames * shape.vision_heads * 400 * 400 * 4,
                  "mlp": frames * 400 * shape.vision_intermediate * 4}))
"""

RSS = r"""
import json, sys, threading, time
import numpy as np, onnxruntime as ort
from hulurt.rope import vision_rope
bundle, mode = sys.argv[1], sys.argv[2]
man = json.load(open(bundle + "/manifest.json"))
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.enable_mem_pattern = mode == "default"
ro = ort.RunOptions()
if mode == "shrink":
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
s = ort.InferenceSession(bundle + "/vision.onnx", sess_options=so, providers=["CPUExecutionProvider"])
cos, sin = vision_rope(20, 20, 2, man["dims"]["vision_head_dim"])
x = np.random.default_rng(0).standard_normal((16, 100, 4, man["dims"]["patch_dim"])).astype(np.float32)
base, calls = rss(), []
for _ in range(2):
    peak, stop = [0], [False]
    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], rss()); time.sleep(0.005)
    th = threading.Thread(target=sample); th.start()
    before = rss()
    s.run(None, {"pixel_patches": x, "rope_cos": cos, "rope_sin": sin}, ro)
    stop[0] = True; th.join()
    calls.append({"before": before - base, "peak": max(peak[0], rss()) - base, "after": rss() - base})
print(json.dumps({"mode": mode, "calls": calls}))
"""


REDUCTION = r"""
import json, sys, time, tracemalloc
import numpy as np
from hulurt import reduction
one_pass = sys.argv[1] == "one"
rng = np.random.default_rng(0)
base = rng.integers(0, 256, (1, 100, 2352))  # a still frame; a third of its tokens change from slice to slice
moved = rng.random((160, 100, 1)) < 0.33
x = ((np.clip(base + moved * rng.integers(-60, 61, (160, 100, 2352)), 0, 255) / 127.5) - 1).astype(np.float32)
if one_pass:
    reduction.DIFF_PASS_VALUES = x.size
tracemalloc.start()
t = time.perf_counter()
keep = reduction.keep_mask(x, 0.1, 1, "bf16")
s = time.perf_counter() - t
print(json.dumps({"passes": "one" if one_pass else "default", "peak": tracemalloc.get_traced_memory()[1],
                  "input": x.nbytes, "seconds": s, "kept": int(keep.sum()),
                  "mask": int((np.flatnonzero(keep) * 2654435761 % 1000003).sum())}))
"""


LOAD = r"""
import json, sys, threading, time
import onnxruntime as ort
from hulurt.backends.base import BackendOptions
from hulurt.backends.ort import session_options
bundle, variant = sys.argv[1], sys.argv[2]
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
keep, rows = [], []
for piece in ("vision", "embed", "decoder"):
    so = session_options(BackendOptions(provider="cpu"))
    if variant == "off":
        so.add_session_config_entry("session.disable_prepacking", "1")
    peak, stop = [0], [False]
    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], rss()); time.sleep(0.005)
    th = threading.Thread(target=sample); th.start(); before = rss()
    keep.append(ort.InferenceSession(f"{bundle}/{piece}.onnx", sess_options=so, providers=["CPUExecutionProvider"]))
    stop[0] = True; th.join()
    rows.append({"piece": piece, "before": before, "peak": max(peak[0], rss()), "after": rss()})
print(json.dumps({"prepacking": variant, "rows": rows}))
"""


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1200,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS / "volume_memory")
    a = ap.parse_args()
    load_before = os.getloadavg()
    prof = [child(PROFILE, str(a.bundle), str(f), str(a.out.parent / f"prof{f}")) for f in (1, 4, 16)]
    rss = [child(RSS, str(a.bundle), m) for m in ("default", "nopattern", "shrink")]
    red = [child(REDUCTION, m) for m in ("one", "default")]
    load = [child(LOAD, str(a.bundle), v) for v in ("on", "off")]
    import onnxruntime

    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "onnxruntime": onnxruntime.__version__,
           "bundle": str(a.bundle), "load_before": load_before, "load_after": os.getloadavg(), "profile": prof,
           "rss": rss, "reduction": red, "load": load}
    lines = [
        "# Where a volume request's memory goes (onnxruntime CPU)",
        "",
        (f"{doc['date']}, onnxruntime {doc['onnxruntime']} CPU, {os.cpu_count()} cores, the vision piece of "
         f"`{a.bundle}` (the 7B-width 2-layer fp32 slice; vision hidden {prof[0]['h'] // (400 * 4)}). Load average "
         f"{load_before[0]:.1f} before, {doc['load_after'][0]:.1f} after (memory, not time, is measured here). "
         f"`python benchmarks/bench_volume_memory.py {' '.join(sys.argv[1:])}`"),
        "",
        "## 1. onnxruntime's accounting per node (memory patterns off)",
        "",
        ("h = frames x 400 x vision hidden x 4 bytes (one stream buffer), score = frames x heads x 400 x 400 x 4, "
         "mlp = frames x 400 x vision intermediate x 4. 'model' is hulurt.schedule.vision_activation_bytes "
         "(onnxruntime CPU) less the input patches."),
        "",
        "| frames | h MiB | score MiB | mlp MiB | arena peak above the weights MiB | model MiB | model / peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in prof:
        lines.append(f"| {p['frames']} | {mib(p['h'])} | {mib(p['score'])} | {mib(p['mlp'])} | {mib(p['peak'])} "
                     f"| {mib(p['model'])} | {p['model'] / p['peak']:.3f} |")
    big = prof[-1]
    lines += ["", f"Every node that grew the arena, {big['frames']} frames (in h, score or mlp units):", "",
              "| node | op | MiB | in units |", "|---|---|---|---|"]
    for op, name, d in big["grew"]:
        if d < 2**16:
            continue
        unit = (f"{d / big['score']:.2f} score" if d > big["score"] * 0.9 else
                f"{d / big['mlp']:.2f} mlp" if abs(d / big["mlp"] - 1) < 0.1 else f"{d / big['h']:.2f} h")
        lines.append(f"| {name} | {op} | {mib(d)} | {unit} |")
    lines += ["", "## 2. RSS over two identical 16-frame calls (MiB above the session after load)", "",
              "| session setting | call 1 peak | after call 1 | call 2 peak | after call 2 |", "|---|---|---|---|---|"]
    names = {"default": "onnxruntime defaults (arena, memory patterns)", "nopattern": "memory patterns off",
             "shrink": "patterns off + arena shrinkage after each call (hulurt's vision session)"}
    for r in rss:
        c1, c2 = r["calls"]
        lines.append(f"| {names[r['mode']]} | {mib(c1['peak'])} | {mib(c1['after'])} | {mib(c2['peak'])} "
                     f"| {mib(c2['after'])} |")
    lines += ["", "## 3. Token reduction of the 160-slice CT's patches (bf16 mode)", "",
              ("Traced peak of numpy allocations above the input (fp32 [160, 100, 2352], "
               f"{mib(red[0]['input'])} MiB); the same keep mask both ways."), "",
              "| passes | traced peak MiB | seconds | kept tokens |", "|---|---|---|---|"]
    for r in red:
        lines.append(f"| {'the whole input at once' if r['passes'] == 'one' else 'default (DIFF_PASS_VALUES)'} "
                     f"| {mib(r['peak'])} | {r['seconds']:.2f} | {r['kept']} |")
    if (red[0]["kept"], red[0]["mask"]) != (red[1]["kept"], red[1]["mask"]):
        raise SystemExit("the passes changed the keep mask")
    lines += ["", "## 4. Opening the sessions (GiB of process RSS)", "",
              ("hulurt opens the pieces in this order with its session options. With prepacking on (hulurt's "
               "setting), opening the decoder makes its weights resident and peaks above that while it does; with "
               "it off, opening reads no weight (the pages of the external data are touched only when a run uses "
               "them), which moves the cost into the first request."), "",
              "| prepacking | piece | RSS before | peak while opening | after |", "|---|---|---|---|---|"]
    for v in load:
        for r in v["rows"]:
            lines.append(f"| {v['prepacking']} | {r['piece']} | {r['before'] / 2**30:.2f} | {r['peak'] / 2**30:.2f} "
                         f"| {r['after'] / 2**30:.2f} |")
    a.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
