"""Benchmark of the token-reduction mask on one GPU: CUDA kernels (hulurt.cuda_reduce) vs a PyTorch CUDA version
of the same rule vs the numpy oracle, in microseconds and GB/s against a device-to-device copy measured in the
same run. Writes bench.json and bench.md under --out.

    PYTHONPATH=runtime python3 benchmarks/token_reduce/bench.py --out /tmp/bench   (needs CUDA torch + the .so)
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hulurt import cuda_reduce, reduction
from hulurt.preprocess import NORM_LUT
from hulurt.testing import near_threshold_volume


def make_volume(t: int, nb: int, d: int, seed: int = 0) -> torch.Tensor:
    """8-bit-derived pixels [T, nb, D] on the GPU (hulurt.testing.near_threshold_volume: tokens static,
    near the threshold or new)."""
    u8 = torch.from_numpy(near_threshold_volume(seed, t, nb, (d,))).cuda()
    return torch.as_tensor(NORM_LUT).cuda()[u8.long()]


def torch_keep_mask(x: torch.Tensor, threshold: float, min_tokens: int, mode: str) -> torch.Tensor:
    """The rule as upstream writes it in PyTorch (hulumed_arch.py _get_compression_mask), eager CUDA ops."""
    nb, d = x.shape[1], x.shape[2]
    if mode == "bf16":
        xb = x.to(torch.bfloat16)
        diff = (xb[1:] - xb[:-1]).abs().mean(dim=-1)  # bf16 out, fp32 accumulation inside
        diff = diff * 255.0
        diff = diff / 255.0
        rest = diff > threshold
    else:
        diff = (x[1:] - x[:-1]).abs().sum(dim=-1, dtype=torch.float64).float() / d
        rest = diff > threshold
    keep = torch.cat([torch.ones((1, nb), dtype=torch.bool, device=x.device), rest], dim=0)
    k = min(min_tokens, nb)
    short = keep.sum(dim=1) < k
    keep[:, :k] |= short[:, None]
    return keep


def time_cuda(fn, reps: int, inner: int = 10, warmup: int = 3) -> dict[str, float]:
    """Per-call device time: events around `inner` back-to-back calls (the Python launch cost of the next call
    overlaps the running one, as in a pipeline), median over `reps` such groups."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b) / inner)
    ms.sort()
    return {
        "median_us": 1e3 * ms[len(ms) // 2],
        "min_us": 1e3 * ms[0],
        "max_us": 1e3 * ms[-1],
        "reps": reps,
        "calls_per_rep": inner,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=2352)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--oracle-frames", type=int, default=160, help="frames the numpy oracle is timed on")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t, nb, d = a.frames, a.tokens, a.dim
    x = make_volume(t, nb, d)
    nbytes = x.numel() * 4
    prop = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        smi = ""
    res: dict = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": prop.name,
        "sms": prop.multi_processor_count,
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "shape": [t, nb, d],
        "pixel_bytes": nbytes,
        "rows": [],
    }

    dst = [torch.empty_like(x)]
    copy = time_cuda(lambda: dst[0].copy_(x), a.reps)  # same method as the kernels' rows
    copy_gbs = 2 * nbytes / (copy["median_us"] * 1e-6) / 1e9
    res["copy"] = {**copy, "gbs_read_plus_write": copy_gbs}
    dst.clear()

    keep = torch.empty((t, nb), dtype=torch.uint8, device="cuda")
    idx = torch.empty(t * nb, dtype=torch.int64, device="cuda")
    counts = torch.empty(t, dtype=torch.int64, device="cuda")
    n_kept = torch.empty(1, dtype=torch.int64, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    xs = x.reshape(t, nb, d)

    def row(impl: str, mode: str, timing: dict, agree: bool | None, note: str = "") -> None:
        gbs = nbytes / (timing["median_us"] * 1e-6) / 1e9
        res["rows"].append(
            {
                "impl": impl,
                "mode": mode,
                **timing,
                "gbs": gbs,
                "pct_of_copy": 100 * gbs / copy_gbs,
                "equals_oracle": agree,
                "note": note,
                "oracle_frames": a.oracle_frames,
            }
        )

    oracle_masks = {}
    for mode in reduction.MODES:
        xo = xs[: a.oracle_frames].cpu().numpy()
        t0 = time.perf_counter()
        want = reduction.keep_mask(xo, 0.1, 1, mode)
        oracle_s = time.perf_counter() - t0
        scale = t / a.oracle_frames
        oracle_masks[mode] = want
        row(
            "numpy oracle (CPU, 1 run)",
            mode,
            {
                "median_us": 1e6 * oracle_s * scale,
                "min_us": 1e6 * oracle_s * scale,
                "max_us": 1e6 * oracle_s * scale,
                "reps": 1,
            },
            True,
            "host CPU time, device-to-host copy excluded"
            + (f"; timed on {a.oracle_frames} frames, scaled" if scale != 1 else ""),
        )
        # the mask of the first `of` frames depends on those frames only: compare that prefix
        of = want.shape[0]
        for algo in ("pair", "stream", "auto"):
            fn = functools.partial(
                cuda_reduce.keep_mask, xs, keep, mode=mode, algo=algo, counts=counts, stream=stream
            )
            tm = time_cuda(fn, a.reps)
            fn()
            torch.cuda.synchronize()
            agree = bool(np.array_equal(keep[:of].cpu().numpy().astype(bool), want))
            row(f"cuda keep_mask algo={algo}", mode, tm, agree)
        fn = functools.partial(cuda_reduce.reduce, xs, keep, idx, counts, n_kept, mode=mode, stream=stream)
        tm = time_cuda(fn, a.reps)
        fn()
        torch.cuda.synchronize()
        agree = bool(np.array_equal(keep[:of].cpu().numpy().astype(bool), want))
        row("cuda reduce (mask+scan+indices)", mode, tm, agree, f"n_kept={int(n_kept.item())} of {t * nb}")
        tm = time_cuda(functools.partial(torch_keep_mask, xs, 0.1, 1, mode), max(5, a.reps // 3), inner=2)
        got = torch_keep_mask(xs, 0.1, 1, mode)[:of].cpu().numpy()
        mism = int((got != want).sum())
        row(
            "pytorch eager (upstream-style)",
            mode,
            tm,
            mism == 0,
            f"{mism} of {want.size} mask entries differ",
        )

    (a.out / "bench.json").write_text(json.dumps(res, indent=2))
    lines = [
        f"# token reduction benchmark: {res['device']} ({res['sms']} SMs), {res['date_utc']}",
        "",
        (
            f"Input: pixels [{t}, {nb}, {d}] float32 = {nbytes / 1e9:.3f} GB, 8-bit-derived, a third of tokens near "
            f"the threshold. torch {res['torch']}, CUDA {res['cuda']}, nvidia-smi: {smi}."
        ),
        (
            f"Device-to-device copy (torch copy_, read + write): {copy_gbs:.0f} GB/s "
            f"(median {copy['median_us']:.1f} us for {2 * nbytes / 1e9:.2f} GB moved)."
        ),
        "GB/s below = pixel bytes read once / median time (the floor: every pixel read once, the mask is tiny).",
        (
            f"'equals oracle': the mask of the first {a.oracle_frames} frames (it depends on those frames only) vs "
            "hulurt.reduction.keep_mask; the oracle's time is for those frames, scaled to all frames."
        ),
        "",
        "| impl | mode | median us | min us | GB/s | % of copy | equals oracle | note |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['impl']} | {r['mode']} | {r['median_us']:.1f} | {r['min_us']:.1f} | {r['gbs']:.1f} | "
            f"{r['pct_of_copy']:.1f} | {r['equals_oracle']} | {r['note']} |"
        )
    (a.out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
