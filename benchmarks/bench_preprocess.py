"""Preprocessing speed: hulurt vs transformers' VideoLLaMA3 image processor on the same frames, in one process.

Workloads (issue 3): a 160-slice 512x512 CT-like volume and a 60-frame 360x640 video, both at m = 2 under
Hulu-Med's request budget. Both sides go from uint8 frames to the float32 [N, 588] patch array; the outputs are
checked equal before timing. transformers gets RGB frames (what upstream hands it); hulurt gets the volume as
the one gray channel its readers produce, and the video as RGB. Writes benchmarks/results/preprocess.{md,json}.

    .venv/bin/python benchmarks/bench_preprocess.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from hulurt import preprocess as pp

from huluexport.bench.report import cpu_model

RESULTS = Path(__file__).parent / "results"


def ct_volume(n: int = 160, size: int = 512, seed: int = 0) -> np.ndarray:
    """A CT-like phantom: body ellipse, organs, lung fields and noise, windowed to uint8 [n, size, size, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    frames = np.empty((n, size, size, 1), np.uint8)
    for k in range(n):
        z = k / n - 0.5
        hu = np.full((size, size), -1000.0, np.float32)
        body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
        hu[body] = 40
        for cx in (-0.18, 0.18):
            lung = ((xx - cx) / 0.12) ** 2 + (yy / (0.2 - 0.1 * abs(z))) ** 2 < 1
            hu[lung] = -850
        hu[(xx / 0.05) ** 2 + ((yy + 0.2) / 0.05) ** 2 < 1] = 700  # spine
        hu += rng.normal(0, 20, hu.shape).astype(np.float32)
        frames[k, ..., 0] = np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8)
    return frames


def video(n: int = 60, h: int = 360, w: int = 640, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frames = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        frames[k] = np.roll(base, 4 * k, axis=1)
        frames[k, 100:160, (10 * k) % (w - 60) : (10 * k) % (w - 60) + 60] = (230, 60, 40)
    return frames


def _measure(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Run the variants round-robin `repeats` times (so they share the machine's load alike); per variant the
    best wall time and the best process CPU time (all threads) in seconds."""
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (min(wall[k]), min(cpu[k])) for k in variants}


def run(repeats: int) -> dict[str, object]:
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import (
        VideoLlama3ImageProcessorPil,
    )

    workloads = {"ct_160x512x512": ct_volume(), "video_60x360x640": video()}
    results: dict[str, object] = {}
    for name, frames in workloads.items():
        t, h, w, _ = frames.shape
        m = 2
        f = pp.PATCH_SIZE * m
        size = pp.plan_sizes([(h, w)], [t], [m])[0]
        rgb = np.repeat(frames, 3, axis=3) if frames.shape[3] == 1 else frames
        rgb_list = list(rgb)
        proc = VideoLlama3ImageProcessorPil(
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            merge_size=m,
            size={"shortest_edge": pp.MIN_TOKENS * f * f, "longest_edge": pp.MAX_TOKENS * f * f // t},
        )
        ours = pp.preprocess_frames(frames, size, m)
        theirs = proc(images=rgb_list, return_tensors="np")
        if not np.array_equal(ours.flat, theirs["pixel_values"]):
            raise SystemExit(f"{name}: outputs differ; the benchmark would compare different work")
        del ours, theirs
        r = _measure(
            {
                "transformers": partial(proc, images=rgb_list, return_tensors="np"),
                "hulurt": partial(pp.preprocess_frames, frames, size, m),
                "hulurt_1thread": partial(pp.preprocess_frames, frames, size, m, threads=1),
                "hulurt_rgb_input_1thread": partial(pp.preprocess_frames, rgb, size, m, threads=1),
                # the floor both sides share: Pillow's bicubic resize of the RGB frames, one thread
                "pillow_rgb_resize_1thread": partial(pp.resize_frames, rgb, size, threads=1),
            },
            repeats,
        )
        hf_wall, hf_cpu = r["transformers"]
        results[name] = {
            "frames": t,
            "in_hw": [h, w],
            "out_hw": list(size),
            "merge_size": m,
            "patches": int(t * (size[0] // 14) * (size[1] // 14)),
            **{f"{k}_wall_s": round(v[0], 4) for k, v in r.items()},
            **{f"{k}_cpu_s": round(v[1], 4) for k, v in r.items()},
            "speedup_wall": round(hf_wall / r["hulurt"][0], 2),
            "speedup_wall_1thread": round(hf_wall / r["hulurt_1thread"][0], 2),
            "speedup_cpu_1thread": round(hf_cpu / r["hulurt_1thread"][1], 2),
            "speedup_cpu_rgb_input_1thread": round(hf_cpu / r["hulurt_rgb_input_1thread"][1], 2),
            "transformers_share_in_pillow_resize": round(r["pillow_rgb_resize_1thread"][1] / hf_cpu, 2),
            "outputs_identical": True,
        }
        print(name, json.dumps(results[name]))
    import PIL
    import transformers

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "versions": {
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "transformers": transformers.__version__,
        },
        "repeats": repeats,
        "statistic": "best of `repeats` round-robin runs; wall time and process CPU time (all threads)",
        "workloads": results,
    }


def write(report: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess.json").write_text(json.dumps(report, indent=2) + "\n")
    mach = report["machine"]
    lines = [
        "# Preprocessing: hulurt vs transformers' VideoLLaMA3 image processor",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores shared with other jobs (1-min load average "
        f"{mach['load_avg_1m_at_end']} at the end of the run), Python {mach['python']}. "
        f"Date: {report['date_utc']}. Best of {report['repeats']} round-robin runs, one process, same frames, outputs "
        "checked identical (float32 [N, 588] patches) before timing.",
        "Command: `.venv/bin/python benchmarks/bench_preprocess.py`.",
        "",
        "| workload | in -> out (m=2) | transformers wall / CPU (s) | hulurt wall / CPU (s) | speedup wall |"
        " hulurt 1 thread wall / CPU (s) | speedup 1 thread wall / CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    workloads: dict[str, dict[str, Any]] = report["workloads"]  # type: ignore[assignment]
    for name, r in workloads.items():
        lines.append(
            f"| {name} | {r['in_hw'][0]}x{r['in_hw'][1]} -> {r['out_hw'][0]}x{r['out_hw'][1]} | "
            f"{r['transformers_wall_s']} / {r['transformers_cpu_s']} | {r['hulurt_wall_s']} / {r['hulurt_cpu_s']} | "
            f"**{r['speedup_wall']}x** | {r['hulurt_1thread_wall_s']} / {r['hulurt_1thread_cpu_s']} | "
            f"{r['speedup_wall_1thread']}x / **{r['speedup_cpu_1thread']}x** |"
        )
    lines += [
        "",
        "CPU time is the fairer single-thread measure on this shared machine (other jobs inflate wall time for",
        "both sides alike but unevenly between runs); the threaded wall time only beats one thread when a second",
        "core is free.",
        "",
        "Why it is faster: Pillow resizes gray slices as one channel (bit-identical to resizing the RGB copy);",
        "normalisation is a 256-entry table lookup after one uint8 transpose instead of a float64 rescale,",
        "float32 normalise and float32 transpose per frame; resize and patchify are fused per frame (cache-hot)",
        "and run on a thread pool (Pillow and numpy release the GIL). transformers is given RGB frames, as",
        "upstream hands them over; with RGB input to hulurt as well the one-thread CPU speedup is "
        + ", ".join(f"{n}: {r['speedup_cpu_rgb_input_1thread']}x" for n, r in workloads.items())
        + ".",
        "",
        "Limit: both sides spend the same time in Pillow's bicubic resize (bit-exact parity needs exactly that C",
        "code); a one-thread RGB resize of the frames takes this share of transformers' CPU time: "
        + ", ".join(f"{n}: {r['transformers_share_in_pillow_resize']:.0%}" for n, r in workloads.items())
        + ".",
        "",
    ]
    (RESULTS / "preprocess.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    write(run(args.repeats))


if __name__ == "__main__":
    main()
