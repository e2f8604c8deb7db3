"""512x512xZ .nii.gz read + preprocess with ISA-L's inflate (python-isal) against zlib (nibabel's own reader),
side by side in one run (issue 16 item 1: under 2 s at Z = 300).

Both readers are the current hulurt.media.load_nifti; "zlib" runs it with the python-isal path switched off
(hulurt.media.nifti._igzip -> None, what a host without the package gets). Runs alternate zlib / isal, each in
a fresh process, so a change in the machine's load hits both. Read + preprocess as in bench_media_read.py: the
volume sampled to the bundle range's 256 frames, then the request-wide resize at upstream's budget (16384
tokens, m = 2) and patchify.

    python benchmarks/bench_nifti_inflate.py --slices 300 --rounds 5 --out benchmarks/results/media_read_quiet.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

CHILD = r"""
import json, resource, sys, time
inflate, path = sys.argv[1:3]
import numpy as np
import hulurt.media as md
from hulurt.media import nifti
from hulurt.preprocess import plan_sizes, preprocess_frames
import nibabel
if inflate == "zlib":
    nifti._igzip = lambda: None
else:
    assert nifti._igzip() is not None, "python-isal is not installed"
    import isal.igzip  # imported before the clock starts, as nibabel is
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
m = md.load_nifti(path, limits=md.ReadLimits(max_frames=256))
t1 = time.perf_counter()
(size,) = plan_sizes([m.hw], [m.n_frames], [2], [m.pil_size_swap], 16, 16384)
vp = preprocess_frames(m.frames, size, 2)
t2 = time.perf_counter()
print(json.dumps({"read_s": t1 - t0, "preprocess_s": t2 - t1, "total_s": t2 - t0, "frames": m.n_frames,
                  "checksum": int(vp.patches.sum(dtype=np.float64) * 1000),
                  "rss_above_start_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def measure(inflate: str, path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", CHILD, inflate, str(path)], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{inflate} run failed: {r.stderr.strip().splitlines()[-1]}")
    return {"inflate": inflate, **json.loads(r.stdout.strip().splitlines()[-1])}


def main() -> int:
    from bench_media_read import write_nifti

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5, help="zlib/isal pairs, alternating")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-inflate-") as tmp:
        p = write_nifti(Path(tmp) / f"ct_{a.slices}.nii.gz", a.slices)
        for i in range(a.rounds):
            for inflate in ("zlib", "isal") if i % 2 == 0 else ("isal", "zlib"):
                rows.append({"round": i + 1, **measure(inflate, p)})
                print(rows[-1], flush=True)
    load_after = os.getloadavg()
    if len({r["checksum"] for r in rows}) != 1:
        raise SystemExit("the two readers gave different patches")
    med = {k: statistics.median(r["total_s"] for r in rows if r["inflate"] == k) for k in ("zlib", "isal")}
    read = {k: statistics.median(r["read_s"] for r in rows if r["inflate"] == k) for k in ("zlib", "isal")}
    import isal

    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()} {os.cpu_count()} CPUs "
            f"({platform.platform()}), Python {platform.python_version()}, python-isal {isal.__version__}; load "
            f"average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_before)} before, "
            f"{'/'.join(f'{x:.2f}' for x in load_after)} after")
    lines = [
        f"# 512x512x{a.slices} NIfTI read + preprocess: ISA-L inflate against zlib (issue 16 item 1: under 2 s)",
        "", head, "", f"`python benchmarks/bench_nifti_inflate.py {' '.join(sys.argv[1:])}`", "",
        ("Each row is a fresh process running the current `load_nifti` (sampled to 256 frames) and the request-wide "
         "resize + patchify; `zlib` switches the python-isal path off (a host without the package). Runs "
         "alternate so load changes hit both; both gave the same patches (checksum)."),
        "", "| round | inflate | read s | preprocess s | total s | peak RSS above start MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['round']} | {r['inflate']} | {r['read_s']:.2f} | {r['preprocess_s']:.2f} "
                     f"| {r['total_s']:.2f} | {r['rss_above_start_mb']:.0f} |")
    worst = max(r["total_s"] for r in rows if r["inflate"] == "isal")
    verdict = "every isal run is under 2 s" if worst < 2 else f"not every isal run is under 2 s (slowest {worst:.2f})"
    lines += ["", f"Median total: zlib {med['zlib']:.2f} s, isal {med['isal']:.2f} s (isal / zlib "
              f"{med['isal'] / med['zlib']:.2f}); median read: zlib {read['zlib']:.2f} s, isal {read['isal']:.2f} s; "
              f"{verdict}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out is not None:
        a.out.write_text(text)
        a.out.with_suffix(".json").write_text(json.dumps({"machine": head, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
