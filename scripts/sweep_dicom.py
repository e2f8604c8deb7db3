"""Every DICOM file of pydicom's test files and of pydicom-data through `hulurt BUNDLE --image FILE`.

Each file must be answered (exit 0) or refused in one stderr line naming the file (exit 2), with no traceback,
within 30 s. Runs in one process (hulurt.cli.main per file, stdout/stderr captured) so the sweep costs the
decoding, not 250 interpreter starts. Prints one line per file and the counts; --out writes a markdown table.

    python scripts/sweep_dicom.py BUNDLE [--out benchmarks/results/dicom_sweep.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path

LIMIT_S = 30.0


def dicom_files() -> list[Path]:
    import pydicom

    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        print("pydicom-data is not installed: sweeping pydicom's own test files only", file=sys.stderr)
    out = []
    for root in roots:
        for f in sorted(root.rglob("*")):
            if not f.is_file() or f.suffix in (".py", ".pyc", ".json", ".txt", ".gz", ".bz2", ".zip"):
                continue
            with open(f, "rb") as fh:
                head = fh.read(132)
            if f.suffix.lower() in (".dcm", ".dicom", ".ima") or head[128:132] == b"DICM":
                out.append(f)
    return out


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout()


def run_one(bundle: Path, f: Path) -> tuple[str, float, str]:
    """(verdict, seconds, first stderr line): verdict answered | refused | BAD: why."""
    from hulurt.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    for h in list(root.handlers):  # let the CLI's basicConfig bind to this call's captured stderr
        root.removeHandler(h)
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(LIMIT_S * 2))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(bundle), "--prompt", "Describe the image.", "--image", str(f), "--max-new-tokens", "1",
                       "--skip-hash-check"])
    except _Timeout:
        return "BAD: over time", time.perf_counter() - t0, ""
    except BaseException as e:  # noqa: BLE001 - a sweep reports anything that escaped the CLI
        return f"BAD: escaped {type(e).__name__}: {e}", time.perf_counter() - t0, ""
    finally:
        signal.alarm(0)
    dt = time.perf_counter() - t0
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if "Traceback" in err.getvalue():
        return "BAD: traceback", dt, first
    if dt > LIMIT_S:
        return "BAD: over 30 s", dt, first
    if rc == 0:
        return "answered", dt, first
    if rc == 2 and len(lines) == 1 and str(f) in first:
        return "refused", dt, first
    return f"BAD: exit {rc}, {len(lines)} stderr lines", dt, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the results as markdown here")
    args = ap.parse_args()
    files = dicom_files()
    rows = []
    for f in files:
        verdict, dt, first = run_one(args.bundle, f)
        rows.append((f, verdict, dt, first))
        print(f"{verdict:10s} {dt:6.2f}s {f.name}: {first[:160]}", flush=True)
    answered = sum(r[1] == "answered" for r in rows)
    refused = sum(r[1] == "refused" for r in rows)
    bad = [r for r in rows if r[1].startswith("BAD")]
    slowest = max(rows, key=lambda r: r[2])
    summary = (f"{len(rows)} files: {answered} answered, {refused} refused in one line, {len(bad)} bad; "
               f"slowest {slowest[2]:.2f} s ({slowest[0].name})")
    print(summary)
    if args.out is not None:
        import pydicom

        load = os.getloadavg()
        lines = [
            "# DICOM sweep: every file of pydicom's test files and pydicom-data as `--image`",
            "",
            f"Run `{' '.join(sys.argv)}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{platform.machine()} {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
            f"(a shared machine), pydicom {pydicom.__version__}, bundle {args.bundle.name}, "
            "`--max-new-tokens 1`.",
            "",
            f"**{summary}.**",
            "",
            "| file | verdict | s | first stderr line |",
            "|---|---|---|---|",
        ]
        for f, verdict, dt, first in rows:
            text = first.replace("|", "\\|").replace(str(f.parent) + "/", "")[:200]
            lines.append(f"| {f.name} | {verdict} | {dt:.2f} | {text} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
