"""Volume readers before and after (issue 14 item 13, issue 16 item 1), side by side in one run.

- NIfTI 512x512xZ int16 (.nii.gz): read + preprocess time (hulurt.media.load_nifti, then the request-wide
  resize rule and patchify at upstream's budget, m = 2) for the current reader and for the reader of a
  baseline commit (git show REV:runtime/hulurt/media.py, imported as a module next to the current hulurt).
- DICOM series of N 512x512 CT slices: peak RSS above the interpreter's (ru_maxrss) and tracemalloc peak of
  load_dicom with a CT window, both readers.

Each measurement runs in a fresh subprocess, so peaks do not mix. Writes markdown (and JSON) results:

    python benchmarks/bench_media_read.py --baseline 0f625f1 --out benchmarks/results/media_read.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, resource, sys, time, tracemalloc
kind, which, path, module_path = sys.argv[1:5]
import numpy as np
if which == "baseline":
    spec = importlib.util.spec_from_file_location("media_baseline", module_path)
    md = importlib.util.module_from_spec(spec); sys.modules["media_baseline"] = md; spec.loader.exec_module(md)
else:
    import hulurt.media as md
from hulurt.preprocess import plan_sizes, preprocess_frames
import nibabel, pydicom  # imported before the baseline RSS is taken
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if kind == "dicom":
    tracemalloc.start()
t0 = time.perf_counter()
if kind == "nifti":
    kw = {} if which == "baseline" else {"limits": md.ReadLimits(max_frames=256)}
    m = md.load_nifti(path, **kw)
    t1 = time.perf_counter()
    (size,) = plan_sizes([m.hw], [m.n_frames], [2], [m.pil_size_swap], 16, 16384)
    vp = preprocess_frames(m.frames, size, 2)
    t2 = time.perf_counter()
    out = {"read_s": t1 - t0, "preprocess_s": t2 - t1, "frames": m.n_frames, "grid": list(vp.grid_thw)}
else:
    m = md.load_dicom(path, window=(40.0, 400.0))
    t1 = time.perf_counter()
    out = {"read_s": t1 - t0, "tracemalloc_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20,
           "frames": m.n_frames, "output_mb": m.frames.nbytes / 2**20}
out["rss_above_start_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def ct_like(shape: tuple[int, int, int], seed: int = 0):  # type: ignore[no-untyped-def]
    """int16 HU-like volume: a body ellipse of soft tissue with noise, air around it, a bright spine."""
    import numpy as np

    x, y, z = shape
    yy, xx = np.mgrid[0:x, 0:y]
    body = ((xx - y / 2) / (0.42 * y)) ** 2 + ((yy - x / 2) / (0.35 * x)) ** 2 < 1
    spine = ((xx - y / 2) ** 2 + (yy - 0.7 * x) ** 2) < (0.04 * x) ** 2
    rng = np.random.default_rng(seed)
    vol = np.empty(shape, dtype=np.int16)
    for k in range(z):
        s = np.where(body, 40, -1000).astype(np.int16)
        s[spine] = 700
        s += rng.normal(0, 20, (x, y)).astype(np.int16)
        vol[:, :, k] = s
    return vol


def write_nifti(path: Path, z: int) -> Path:
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(ct_like((512, 512, z)), np.eye(4)), path)
    return path


def write_series(d: Path, n: int) -> Path:
    import numpy as np
    import pydicom

    base = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    d.mkdir(parents=True, exist_ok=True)
    vol = ct_like((512, 512, n))
    for k in range(n):
        ds = base.copy()
        ds.Rows = ds.Columns = 512
        ds.PixelData = np.ascontiguousarray(vol[:, :, k]).tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 1.0 * k]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(d / f"slice{k:04d}.dcm")
    return d


def measure(kind: str, which: str, path: Path, module: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, kind, which, str(path), str(module)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"not finished within {timeout:.0f} s (stopped)"}
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="0f625f1", help="git revision whose runtime/hulurt/media.py is the before")
    ap.add_argument("--nifti-slices", default="60,120,300", help="Z of the 512x512xZ NIfTI volumes")
    ap.add_argument("--baseline-max-slices", type=int, default=120,
                    help="largest Z run through the baseline reader (its cost grows with Z^2)")
    ap.add_argument("--series", type=int, default=160, help="slices of the DICOM series")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        t = Path(tmp)
        old = t / "media_baseline.py"
        old.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{args.baseline}:runtime/hulurt/media.py"],
                                      check=True, capture_output=True, text=True).stdout)
        for z in (int(s) for s in args.nifti_slices.split(",")):
            p = write_nifti(t / f"ct_{z}.nii.gz", z)
            for which in ("current", "baseline"):
                if which == "baseline" and z > args.baseline_max_slices:
                    rows.append({"case": f"NIfTI 512x512x{z}", "reader": which,
                                 "error": f"not run (above --baseline-max-slices {args.baseline_max_slices})"})
                    continue
                r = measure("nifti", which, p, old, args.timeout)
                rows.append({"case": f"NIfTI 512x512x{z}", "reader": which, **r})
                print(rows[-1], flush=True)
            p.unlink()
        d = write_series(t / "series", args.series)
        for which in ("current", "baseline"):
            r = measure("dicom", which, d, old, args.timeout)
            rows.append({"case": f"DICOM series {args.series} x 512x512", "reader": which, **r})
            print(rows[-1], flush=True)
    load_after = os.getloadavg()
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()} {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.platform()}), load average {load_before[0]:.1f} before / "
            f"{load_after[0]:.1f} after (a shared machine: other jobs ran alongside), baseline = "
            f"{args.baseline}:runtime/hulurt/media.py")
    if args.out is not None:
        lines = ["# Volume readers: before and after (one run, side by side)", "", head, "",
                 f"`{' '.join(sys.argv)}`", "",
                 "| case | reader | read s | preprocess s | frames kept | peak RSS above start MB | "
                 "tracemalloc peak MB | note |", "|---|---|---|---|---|---|---|---|"]
        def cell(r: dict, k: str) -> str:
            v = r.get(k)
            return f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))

        for r in rows:
            c = [cell(r, k) for k in ("read_s", "preprocess_s", "frames", "rss_above_start_mb", "tracemalloc_peak_mb")]
            lines.append(f"| {r['case']} | {r['reader']} | {' | '.join(c)} | {r.get('error', '')} |")
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"machine": head, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
