"""`huluexport quantize` before and after streaming (huluexport/export/extdata.py), side by side in one run:
peak RSS and wall time on full-width 7B slices of different depth, and whether the two write the same bytes.

    python benchmarks/bench_quantize_stream.py --old DIR_WITH_OLD_SOURCES --bundle L2=PATH --bundle L8=PATH \
        --work DIR --bits 4 --json benchmarks/results/quantize_stream.json \
        --markdown benchmarks/results/quantize.md

`--old` is a checkout of the previous huluexport (e.g. `git archive <commit> huluexport runtime | tar -x`); the
new one is the package this script's repository holds. Each (bundle, implementation) pair runs once, in the
order L2 old, L2 new, L8 old, ..., under /usr/bin/time -v; the markdown section between the markers is replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_quantize_stream: begin -->", "<!-- bench_quantize_stream: end -->"
CLI = ("import sys, huluexport; print('huluexport from', huluexport.__file__, flush=True); "
       "from huluexport.cli import main; sys.argv[0] = 'huluexport'; sys.exit(main())")


def timed(root: Path, args: list[str], log: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'runtime'}"}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CLI, *args]
    la0 = os.getloadavg()
    with log.open("w") as f:
        # cwd=root: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
        rc = subprocess.run(cmd, env=env, cwd=root, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    text = log.read_text()
    if rc != 0:
        raise SystemExit(f"{' '.join(args)} failed (rc {rc}); see {log}")
    if f"huluexport from {root.resolve()}/" not in text:
        raise SystemExit(f"{log}: huluexport was not imported from {root}")

    def field(name: str) -> str:
        m = re.search(rf"^\s*{re.escape(name)}: (.+)$", text, re.M)
        if m is None:
            raise SystemExit(f"{log}: no '{name}' line from /usr/bin/time -v")
        return m.group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    return {"wall_s": wall, "user_s": float(field("User time (seconds)")),
            "sys_s": float(field("System time (seconds)")), "cpu_pct": float(field("Percent of CPU this job got")
                                                                          .rstrip("%")),
            "max_rss_gb": int(field("Maximum resident set size (kbytes)")) * 1024 / 1e9,
            "load_before": la0[0], "load_after": os.getloadavg()[0]}


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--bundle", action="append", required=True, help="LABEL=PATH (fp16 7B-width slice)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.bundle:
        label, path = spec.split("=", 1)
        src = Path(path)
        outs = {}
        for impl, root in (("before", a.old), ("after", REPO)):
            out = a.work / f"{label}-{impl}-int{a.bits}"
            args = ["quantize", str(src), "--out", str(out), "--bits", str(a.bits), "--overwrite"]
            r = timed(root, args, a.work / f"{label}-{impl}.log")
            r.update(bundle=label, impl=impl, src_decoder_gb=(src / "decoder.onnx.data").stat().st_size / 1e9,
                     out_decoder_gb=(out / "decoder.onnx.data").stat().st_size / 1e9,
                     command=f"huluexport {' '.join(args)}", utc=time.strftime("%H:%M", time.gmtime()))
            print(json.dumps(r), flush=True)
            rows.append(r)
            outs[impl] = out
        same = {f: sha(outs["before"] / f) == sha(outs["after"] / f) for f in ("decoder.onnx", "decoder.onnx.data")}
        rows[-1]["same_bytes"] = rows[-2]["same_bytes"] = all(same.values())
        for out in outs.values():
            shutil.rmtree(out)
    meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "python": platform.python_version(), "bits": a.bits, "rows": rows}
    if a.json:
        a.json.write_text(json.dumps(meta, indent=1) + "\n")
    if a.markdown:
        write_markdown(a.markdown, meta)


def write_markdown(path: Path, meta: dict) -> None:
    rows = meta["rows"]
    lines = [
        BEGIN,
        "## Streaming the quantized weights: peak memory no longer grows with depth",
        "",
        f"Generated by `benchmarks/bench_quantize_stream.py` on {meta['date']} ({meta['machine']}, shared: the load "
        "average at each run's start and end is in the table). fp16 full-width 7B slices "
        "(`huluexport build --size 7b --random-weights --precision fp16 --layers N --vision-layers 1`), "
        f"`huluexport quantize SRC --out OUT --bits {meta['bits']}` under `/usr/bin/time -v`, the previous "
        "implementation (whole quantized piece in the ModelProto, one `onnx.save_model` at the end) and the "
        "streaming one run one after the other in the same script.",
        "",
        "| slice | decoder fp16 | int4 out | implementation | UTC | wall s | user+sys s | CPU % | peak RSS GB | "
        "load start/end | same bytes |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bundle']} | {r['src_decoder_gb']:.2f} GB | {r['out_decoder_gb']:.2f} GB | {r['impl']} | {r['utc']} "
            f"| {r['wall_s']:.1f} | {r['user_s'] + r['sys_s']:.1f} | {r['cpu_pct']:.0f} | {r['max_rss_gb']:.2f} | "
            f"{r['load_before']:.1f} / {r['load_after']:.1f} | {'yes' if r['same_bytes'] else 'NO'} |"
        )
    by = {(r["bundle"], r["impl"]): r for r in rows}
    labels = list(dict.fromkeys(r["bundle"] for r in rows))
    if len(labels) >= 2:
        lo, hi = labels[0], labels[-1]
        lines.append("")
        for impl in ("before", "after"):
            a, b = by[(lo, impl)], by[(hi, impl)]
            cpu = (b["user_s"] + b["sys_s"]) / (a["user_s"] + a["sys_s"])
            lines.append(
                f"- {impl}: {hi} / {lo}: source bytes x{b['src_decoder_gb'] / a['src_decoder_gb']:.2f}, wall "
                f"x{b['wall_s'] / a['wall_s']:.2f}, CPU time x{cpu:.2f}, peak RSS "
                f"x{b['max_rss_gb'] / a['max_rss_gb']:.2f} ({a['max_rss_gb']:.2f} -> {b['max_rss_gb']:.2f} GB)"
            )
    lines += ["", "Commands (from the repository root, `--old` a `git archive` of the commit before streaming):", "",
              "    " + " ".join(["python benchmarks/bench_quantize_stream.py", *sys.argv[1:]]), "", END]
    text = path.read_text() if path.exists() else ""
    block = "\n".join(lines) + "\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


if __name__ == "__main__":
    main()
