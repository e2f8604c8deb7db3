"""`huluexport build` of a 7B checkpoint: a baseline checkout and this one, side by side in one run.

    python benchmarks/bench_build_7b.py --checkpoint /work/big/ckpt7b --baseline /work/wt/base \
        --work /work/big/bench --precision fp16 --out benchmarks/results/build_7b_run.md

Each variant runs `huluexport -v build --checkpoint CKPT --precision P --out WORK/<variant>` in its own process under
`/usr/bin/time -v` (wall, user + sys CPU, peak RSS), with the page cache dropped before it where this process may
(root), so neither run finds the checkpoint already in memory. Phases: this checkout prints its phase table
(huluexport/progress.py) with -v; a baseline from before that module has its phases read from its -v log lines.
Each bundle is deleted after its run (16 GB each), except with --keep for the last variant. The markdown written
to --out holds the commands, the machine, the load before and after each run, and the tables; nothing is typed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TIME_FIELDS = {
    "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)",
    "user": r"User time \(seconds\): ([\d.]+)",
    "sys": r"System time \(seconds\): ([\d.]+)",
    "rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
}
# The baseline's -v log lines (huluexport/export/pipeline.py before progress.py): piece phases with their seconds.
BASE_LINES = [
    (re.compile(r"export (\w+): traced in ([\d.]+) s"), "{0}: trace"),
    (re.compile(r"INFO huluexport\.export\.pipeline: (\w+): ([a-z_ ()]+) \(([\d.]+) s\)"), "{0}: {1}"),
    (re.compile(r"INFO huluexport\.export\.pipeline: (\w+): saved .* \(([\d.]+) s\)"), "{0}: save"),
    (re.compile(r"build: .* done in ([\d.]+) s"), "build (inside, total)"),
]


def wall_seconds(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    s = 0.0
    for p in parts:
        s = s * 60 + p
    return s


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def loadavg() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:2])


def run_variant(name: str, src: Path, args: argparse.Namespace) -> dict:
    out = args.work / name
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PYTHONPATH=f"{src}:{src / 'runtime'}", PYTHONUNBUFFERED="1")
    cmd = [
        "/usr/bin/time", "-v", sys.executable, "-c", "import sys; from huluexport.cli import main; main()",
        "-v", "build", "--checkpoint", str(args.checkpoint), "--precision", args.precision, "--out", str(out),
    ]
    dropped = drop_caches()
    before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = loadavg()
    log = proc.stderr
    (args.work / f"{name}.log").write_text(log)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: build failed (exit {proc.returncode}); log in {args.work / f'{name}.log'}")
    res = {k: re.search(p, log).group(1) for k, p in TIME_FIELDS.items()}  # type: ignore[union-attr]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    table = [ln for ln in log.splitlines() if ln.startswith("|")]
    if not table:  # the baseline: phases from its log lines
        table = ["| phase | wall s |", "|---|---:|"]
        for ln in log.splitlines():
            for rx, fmt in BASE_LINES:
                m = rx.search(ln)
                if m:
                    *names, secs = m.groups()
                    table.append(f"| {fmt.format(*names)} | {float(secs):.2f} |")
    if not (args.keep and name == args.variants[-1]):
        shutil.rmtree(out)
    return {
        "name": name, "src": src, "cache_dropped": dropped, "load_before": before, "load_after": after,
        "elapsed": elapsed, "wall": wall_seconds(res["wall"]), "user": float(res["user"]), "sys": float(res["sys"]),
        "rss_gb": int(res["rss_kb"]) * 1024 / 1e9, "bundle_gb": size / 1e9, "table": table,
        "cmd": " ".join(cmd[2:3] + ["-m", "huluexport"] + cmd[5:]),
    }


def commit_of(src: Path) -> str:
    r = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the baseline commit")
    ap.add_argument("--current", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--variants", nargs="+", default=["baseline", "current"])
    ap.add_argument("--keep", action="store_true", help="keep the last variant's bundle")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    srcs = {"baseline": args.baseline, "current": args.current}
    results = [run_variant(v, srcs[v], args) for v in args.variants]

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} cores ({cpu}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"checkpoint `{args.checkpoint}`, precision {args.precision}. Script: `benchmarks/bench_build_7b.py`.",
        "",
        "| variant | commit | load 1/5 min before -> after | page cache dropped | wall | CPU user + sys | peak RSS "
        "| bundle |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {commit_of(r['src'])} | {r['load_before']} -> {r['load_after']} | "
            f"{'yes' if r['cache_dropped'] else 'no'} | {r['wall']:.1f} s | {r['user']:.1f} + {r['sys']:.1f} s | "
            f"{r['rss_gb']:.2f} GB | {r['bundle_gb']:.2f} GB |"
        )
    if len(results) == 2:
        a, b = results
        lines += ["", f"Wall time ratio {b['name']} / {a['name']}: {b['wall'] / a['wall']:.2f} "
                      f"({a['wall'] / b['wall']:.2f}x faster); peak RSS ratio {b['rss_gb'] / a['rss_gb']:.2f}."]
    for r in results:
        lines += ["", f"### {r['name']} phases", "", f"`{r['cmd']}`", "", *r["table"]]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
