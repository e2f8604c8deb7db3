"""Measuring: one request's stage seconds (RunRecord), their statistics, process memory while a side runs,
the interleaved loop over the sides, and the decode roofline."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from huluexport.bench.schema import STAGES
from huluexport.errors import ConfigError

log = logging.getLogger(__name__)


# Records and statistics


@dataclass(frozen=True)
class RunRecord:
    """One request. `stages` in seconds; `decode` there is the total decode time of `decode_steps` steps."""

    stages: dict[str, float]
    decode_steps: int
    new_tokens: int
    prompt_tokens: int
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    token_ids: tuple[int, ...] = ()

    def per_token(self) -> dict[str, float]:
        """Stages with `decode` turned into seconds per decoded token (NaN when nothing was decoded)."""
        out = dict(self.stages)
        out["decode"] = self.stages["decode"] / self.decode_steps if self.decode_steps else float("nan")
        return out


@dataclass(frozen=True)
class Stat:
    median: float
    p10: float
    p90: float
    min: float
    max: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat:
        v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
        if v.size == 0:
            nan = float("nan")
            return Stat(nan, nan, nan, nan, nan, 0)
        p10, med, p90 = np.percentile(v, [10, 50, 90])
        return Stat(float(med), float(p10), float(p90), float(v.min()), float(v.max()), int(v.size))


def stage_stats(records: Sequence[RunRecord]) -> dict[str, Stat]:
    per = [r.per_token() for r in records]
    stats = {s: Stat.of([p[s] for p in per if s in p]) for s in STAGES}
    stats["decode_tok_s"] = Stat.of([1.0 / p["decode"] for p in per if p["decode"] > 0])
    return stats


# Memory


def _ru_maxrss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib if sys.platform == "darwin" else kib * 1024)  # Linux reports KiB, macOS bytes


class MemorySampler:
    """Samples this process's RSS (psutil) and, when NVML finds a GPU, device memory used, every `period` s.

    What it measures: `rss_peak` is the highest RSS seen *while sampling* (a short spike between two samples
    can be missed); `ru_maxrss` is the kernel's exact lifetime peak of the whole process, which includes
    everything loaded before (torch, the other side of a comparison). GPU figures are device-wide (all
    processes), as NVML reports them.
    """

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.rss_start = self.rss_peak = self.rss_end = 0
        self.gpu_used_peak: int | None = None
        self.gpu_total: int | None = None
        self.gpu_name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: Any = None
        self._nvml: Any = None

    def _rss(self) -> int:
        if self._proc is not None:
            return int(self._proc.memory_info().rss)
        with open("/proc/self/statm") as f:  # pages -> bytes; Linux fallback without psutil
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _gpu_used(self) -> int | None:
        if self._nvml is None:
            return None
        nv, handle = self._nvml
        return int(nv.nvmlDeviceGetMemoryInfo(handle).used)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.rss_peak = max(self.rss_peak, self._rss())
            used = self._gpu_used()
            if used is not None:
                self.gpu_used_peak = max(self.gpu_used_peak or 0, used)

    def __enter__(self) -> MemorySampler:  # noqa: PYI034 (typing.Self needs Python 3.11)
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        try:
            import pynvml as nv

            nv.nvmlInit()
            handle = nv.nvmlDeviceGetHandleByIndex(0)
            self._nvml = (nv, handle)
            info = nv.nvmlDeviceGetMemoryInfo(handle)
            self.gpu_total, self.gpu_used_peak = int(info.total), int(info.used)
            name = nv.nvmlDeviceGetName(handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 -- no pynvml, no driver or no GPU: GPU memory is "not measured"
            self._nvml = None
        self.rss_start = self.rss_peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.rss_end = self._rss()
        self.rss_peak = max(self.rss_peak, self.rss_end)

    def to_json(self) -> dict[str, Any]:
        return {
            "rss_start_bytes": self.rss_start,
            "rss_peak_sampled_bytes": self.rss_peak,
            "rss_end_bytes": self.rss_end,
            "ru_maxrss_process_bytes": _ru_maxrss_bytes(),
            "gpu_name": self.gpu_name,
            "gpu_used_peak_bytes": self.gpu_used_peak,
            "gpu_total_bytes": self.gpu_total,
            "sampling_period_s": self.period,
        }


# Measuring


@dataclass(frozen=True)
class SideResult:
    """One side of a benchmark (the runtime, or the PyTorch reference): its runs, stats and memory."""

    name: str
    description: str
    load_s: float
    records: tuple[RunRecord, ...]
    memory: dict[str, Any]
    weights_read_per_token_bytes: int  # at the stored precision, for the roofline
    kv_bytes_per_token: int

    @property
    def stats(self) -> dict[str, Stat]:
        return stage_stats(self.records)


@dataclass
class PreparedSide:
    """A loaded side, ready to run one request per `once()` call."""

    name: str
    description: str
    load_s: float
    once: Callable[[], RunRecord]
    weights_read_per_token_bytes: int
    kv_bytes_per_token: int
    rss_before_load: int
    rss_after_load: int
    close: Callable[[], None] = lambda: None
    # one untimed greedy run of n tokens handing back (tokens, the logits row [vocab] of each): the greedy check
    trace: Callable[[int], tuple[list[int], list[np.ndarray]]] | None = None
    # the description as it stands after the runs, where a run can change it (a CUDA graph capture that failed
    # in the first decode step: the runtime then decodes without the graph)
    describe: Callable[[], str] | None = None


def _merge_memory(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run sampler results -> one side's memory record (peaks are maxima over its runs)."""
    out = dict(samples[-1])
    out["rss_start_bytes"] = samples[0]["rss_start_bytes"]
    out["rss_peak_sampled_bytes"] = max(x["rss_peak_sampled_bytes"] for x in samples)
    out["run_growth_bytes"] = max(x["rss_peak_sampled_bytes"] - x["rss_start_bytes"] for x in samples)
    gpu = [x["gpu_used_peak_bytes"] for x in samples if x["gpu_used_peak_bytes"] is not None]
    out["gpu_used_peak_bytes"] = max(gpu) if gpu else None
    return out


def measure_sides(sides: Sequence[PreparedSide], warmup: int, repeats: int) -> dict[str, SideResult]:
    """`warmup` untimed runs of each side, then `repeats` rounds in which every side runs once, in turn
    (A B A B ...): load from other processes on a shared machine then falls on all sides alike. Each run is
    watched by its own MemorySampler."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1; got {repeats}")
    for i in range(warmup):
        for sd in sides:
            sd.once()
        log.info("warm-up %d/%d done", i + 1, warmup)
    records: dict[str, list[RunRecord]] = {sd.name: [] for sd in sides}
    mems: dict[str, list[dict[str, Any]]] = {sd.name: [] for sd in sides}
    for i in range(repeats):
        for sd in sides:
            with MemorySampler() as mem:
                rec = sd.once()
            records[sd.name].append(rec)
            mems[sd.name].append(mem.to_json())
            log.info("run %d/%d %s: e2e %.3f s", i + 1, repeats, sd.name, rec.stages["e2e"])
    out = {}
    for sd in sides:
        memory = _merge_memory(mems[sd.name])
        memory["rss_before_load_bytes"], memory["rss_after_load_bytes"] = (
            sd.rss_before_load,
            sd.rss_after_load,
        )
        memory["load_growth_bytes"] = sd.rss_after_load - sd.rss_before_load
        out[sd.name] = SideResult(
            sd.name,
            sd.describe() if sd.describe else sd.description,
            sd.load_s,
            tuple(records[sd.name]),
            memory,
            sd.weights_read_per_token_bytes,
            sd.kv_bytes_per_token,
        )
    return out


def measure(
    run_once: Callable[[], RunRecord], warmup: int, repeats: int
) -> tuple[list[RunRecord], dict[str, Any]]:
    """One side alone: `warmup` untimed runs, then `repeats` timed runs."""
    side = PreparedSide("side", "", 0.0, run_once, 0, 0, 0, 0)
    res = measure_sides([side], warmup, repeats)["side"]
    return list(res.records), res.memory


# Roofline


def roofline(side: SideResult, bandwidth_bytes_s: float) -> dict[str, Any]:
    """Upper bound on decode tokens/s: every decoded token streams the decoder weights (at their stored
    precision) and the KV cache at the current length; bound = bandwidth / bytes. Uses the mean context
    over the decode steps of the median run."""
    stats = side.stats
    last = side.records[-1]
    mean_ctx = last.prompt_tokens + (last.decode_steps + 1) / 2
    kv = side.kv_bytes_per_token * mean_ctx
    per_token = side.weights_read_per_token_bytes + kv
    bound = bandwidth_bytes_s / per_token if per_token > 0 else float("nan")
    measured = stats["decode_tok_s"].median
    return {
        "bandwidth_bytes_s": bandwidth_bytes_s,
        "weights_bytes_per_token": side.weights_read_per_token_bytes,
        "kv_bytes_per_token_at_mean_context": int(kv),
        "mean_context_tokens": mean_ctx,
        "bytes_per_token": int(per_token),
        "bound_tok_s": bound,
        "measured_tok_s": measured,
        "measured_over_bound_pct": 100.0 * measured / bound
        if bound and np.isfinite(measured)
        else float("nan"),
    }
