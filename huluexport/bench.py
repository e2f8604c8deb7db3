"""Benchmark harness: per-stage latency (median and spread after warm-up), memory, roofline, and reports.

A *runner* does one request and returns a RunRecord of stage seconds; `measure` repeats it. The runtime
runner times hulurt's sessions from the outside; the reference runner times the PyTorch model on the same
inputs in the same process. Reports: rich table, JSON (schema `huluexport.bench/1`, checked by
`check_report`), Markdown and a PNG.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from huluexport.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = "huluexport.bench/1"
# Stages in pipeline order. "decode" is per decoded token; "ttft" and "e2e" span the others.
STAGES = ("preprocess", "vision", "reduction", "embed", "prefill", "ttft", "decode", "e2e")
STAGE_HELP = {
    "preprocess": "read/resize/normalise/patchify + prompt ids (shared by both sides when comparing)",
    "vision": "vision piece: encoder + merge + projector, all visual inputs",
    "reduction": "token-reduction keep mask (host)",
    "embed": "embedding gather + scatter of visual rows",
    "prefill": "decoder over the prompt -> first logits",
    "ttft": "request start -> first token chosen (preprocess, vision, reduction, embed, prefill, sampling)",
    "decode": "seconds per decoded token (decoder step + embed of one id + sampling)",
    "e2e": "request start -> last token",
}


# --------------------------------------------------------------------------------------------------
# Records and statistics
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


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
            sd.description,
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


class StageClock:
    """Accumulates wall time per stage name: `with clock("vision"): ...`."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[stage] = self.t.get(stage, 0.0) + time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for mod in ("onnxruntime", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _stat_json(s: Stat) -> dict[str, Any]:
    return dataclasses.asdict(s)


def build_report(
    *,
    runtime: SideResult,
    reference: SideResult | None,
    bandwidth_bytes_s: float,
    bundle: dict[str, Any],
    inputs: dict[str, Any],
    settings: dict[str, Any],
    plan_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready report (schema `huluexport.bench/1`)."""

    def side_json(s: SideResult) -> dict[str, Any]:
        last = s.records[-1]
        return {
            "description": s.description,
            "load_s": s.load_s,
            "stages": {k: _stat_json(v) for k, v in s.stats.items()},
            "runs": [r.per_token() for r in s.records],
            "tokens": {
                "prompt": last.prompt_tokens,
                "new": last.new_tokens,
                "decode_steps": last.decode_steps,
                "visual_before_reduction": last.visual_tokens_before,
                "visual_after_reduction": last.visual_tokens_after,
            },
            "memory": s.memory,
            "roofline": roofline(s, bandwidth_bytes_s),
        }

    sides = {"runtime": side_json(runtime)}
    ratios: dict[str, float] = {}
    if reference is not None:
        sides["reference"] = side_json(reference)
        rs, fs = runtime.stats, reference.stats
        for k in (*STAGES, "decode_tok_s"):
            a, b = rs[k].median, fs[k].median
            if k == "decode_tok_s":
                a, b = b, a  # speed: runtime / reference, so > 1 means the runtime is faster, like the times
            ratios[k] = float(b / a) if a and np.isfinite(a) and np.isfinite(b) and a > 0 else float("nan")
    same_tokens = None
    if reference is not None:
        same_tokens = runtime.records[-1].token_ids == reference.records[-1].token_ids
    return {
        "schema": SCHEMA,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "bundle": bundle,
        "inputs": inputs,
        "settings": settings,
        "stage_help": STAGE_HELP,
        "sides": sides,
        "ratios_reference_over_runtime": ratios,
        "same_tokens": same_tokens,
        "plan_check": plan_check,
    }


_STAT_KEYS = {"median": float, "p10": float, "p90": float, "min": float, "max": float, "n": int}


def check_report(doc: Any) -> None:
    """Raise ValueError naming the first field of `doc` that breaks schema huluexport.bench/1."""

    def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where}: missing key {key!r}")
        val = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)
        if isinstance(val, bool) and bool not in kinds or not isinstance(val, kinds):
            raise ValueError(f"{where}.{key}: expected {kind}, found {type(val).__name__}")
        return val

    if need(doc, "schema", str, "report") != SCHEMA:
        raise ValueError(f"report.schema: expected {SCHEMA!r}, found {doc['schema']!r}")
    for key, kind in (
        ("created_utc", str),
        ("machine", dict),
        ("bundle", dict),
        ("inputs", dict),
        ("settings", dict),
        ("sides", dict),
        ("ratios_reference_over_runtime", dict),
    ):
        need(doc, key, kind, "report")
    need(doc["machine"], "cpu_count", int, "machine")
    need(doc["bundle"], "path", str, "bundle")
    need(doc["inputs"], "preset", str, "inputs")
    for key in ("warmup", "repeats"):
        need(doc["settings"], key, int, "settings")
    sides = doc["sides"]
    need(sides, "runtime", dict, "sides")
    for name, side in sides.items():
        w = f"sides.{name}"
        if name not in ("runtime", "reference"):
            raise ValueError(f"{w}: unknown side")
        need(side, "load_s", float, w)
        stages = need(side, "stages", dict, w)
        for st in (*STAGES, "decode_tok_s"):
            s = need(stages, st, dict, f"{w}.stages")
            for k, kind in _STAT_KEYS.items():
                need(s, k, kind, f"{w}.stages.{st}")
        runs = need(side, "runs", list, w)
        if len(runs) != stages["e2e"]["n"]:
            raise ValueError(f"{w}.runs: {len(runs)} runs but stages.e2e.n = {stages['e2e']['n']}")
        tok = need(side, "tokens", dict, w)
        for k in ("prompt", "new", "decode_steps", "visual_before_reduction", "visual_after_reduction"):
            need(tok, k, int, f"{w}.tokens")
        mem = need(side, "memory", dict, w)
        need(mem, "rss_peak_sampled_bytes", int, f"{w}.memory")
        need(mem, "ru_maxrss_process_bytes", int, f"{w}.memory")
        roof = need(side, "roofline", dict, w)
        for k in (
            "bandwidth_bytes_s",
            "bytes_per_token",
            "bound_tok_s",
            "measured_tok_s",
            "measured_over_bound_pct",
        ):
            need(roof, k, float, f"{w}.roofline")
    if "reference" in sides:
        for st in (*STAGES, "decode_tok_s"):
            need(doc["ratios_reference_over_runtime"], st, float, "ratios_reference_over_runtime")


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x * 1e3:.1f}"


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "n/a"
    from huluexport.plan import fmt_bytes

    return fmt_bytes(n)


def render_report(doc: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    sides = doc["sides"]
    ratios = doc["ratios_reference_over_runtime"]
    t = Table(
        title=escape(
            f"huluexport bench: {doc['bundle'].get('name', doc['bundle']['path'])}, input "
            f"{doc['inputs']['preset']} (median [p10-p90] ms over {doc['settings']['repeats']} runs)"
        )
    )
    t.add_column("stage")
    for name in sides:
        t.add_column(name, justify="right")
    if ratios:
        t.add_column("reference / runtime", justify="right")
    for st in (*STAGES, "decode_tok_s"):
        row = [st + (" (per token)" if st == "decode" else "")]
        for side in sides.values():
            s = side["stages"][st]
            if st == "decode_tok_s":
                row.append(f"{s['median']:.1f} [{s['p10']:.1f}-{s['p90']:.1f}] tok/s")
            else:
                row.append(f"{_ms(s['median'])} [{_ms(s['p10'])}-{_ms(s['p90'])}]")
        if ratios:
            r = ratios.get(st, float("nan"))
            row.append("-" if not np.isfinite(r) else f"{r:.2f}x")
        t.add_row(*[escape(c) for c in row])
    info = Table(title="tokens, memory, roofline", show_header=True)
    info.add_column("")
    for name in sides:
        info.add_column(name, justify="right")

    def add(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        info.add_row(escape(label), *[escape(fn(s)) for s in sides.values()])

    add("load (s)", lambda s: f"{s['load_s']:.2f}")
    add("prompt / new tokens", lambda s: f"{s['tokens']['prompt']} / {s['tokens']['new']}")
    add(
        "visual tokens before -> after reduction",
        lambda s: f"{s['tokens']['visual_before_reduction']} -> {s['tokens']['visual_after_reduction']}",
    )
    add("RSS growth when loading", lambda s: _fmt_bytes(s["memory"].get("load_growth_bytes")))
    add("peak RSS sampled during runs", lambda s: _fmt_bytes(s["memory"]["rss_peak_sampled_bytes"]))
    add("process ru_maxrss (lifetime)", lambda s: _fmt_bytes(s["memory"]["ru_maxrss_process_bytes"]))
    add(
        "GPU memory used (NVML)",
        lambda s: (
            _fmt_bytes(s["memory"]["gpu_used_peak_bytes"])
            if s["memory"]["gpu_used_peak_bytes"] is not None
            else "no NVML GPU"
        ),
    )
    add("bytes read per decoded token", lambda s: _fmt_bytes(s["roofline"]["bytes_per_token"]))
    add("decode bound (tok/s)", lambda s: f"{s['roofline']['bound_tok_s']:.1f}")
    add("measured / bound", lambda s: f"{s['roofline']['measured_over_bound_pct']:.1f} %")
    bw = sides["runtime"]["roofline"]["bandwidth_bytes_s"]
    foot = (
        f"memory bandwidth probe: {bw / 1e9:.2f} GB/s (single-thread numpy copy); machine: "
        f"{doc['machine']['processor']}, {doc['machine']['cpu_count']} cores"
    )
    if doc.get("same_tokens") is not None:
        foot += f"; same greedy tokens on both sides: {doc['same_tokens']}"
    return Group(t, info, escape(foot))


def render_markdown(doc: dict[str, Any]) -> str:
    sides = doc["sides"]
    ratios = doc["ratios_reference_over_runtime"]
    names = list(sides)
    m = doc["machine"]
    lines = [
        f"# huluexport bench: {doc['bundle'].get('name', doc['bundle']['path'])}",
        "",
        f"- created: {doc['created_utc']}",
        f"- machine: {m['processor']}, {m['cpu_count']} cores, {_fmt_bytes(m.get('memory_bytes'))} RAM, "
        f"{m['platform']}; python {m['python']}, numpy {m['numpy']}"
        + "".join(f", {k} {m[k]}" for k in ("onnxruntime", "torch") if k in m),
        (
            f"- bundle: `{doc['bundle']['path']}` (precision {doc['bundle'].get('precision')}, "
            f"target {doc['bundle'].get('target')})"
        ),
        f"- input: {json.dumps(doc['inputs'])}",
        f"- settings: {json.dumps(doc['settings'])}",
        "",
        "## Stages (ms; median [p10 - p90])",
        "",
        "| stage | " + " | ".join(names) + (" | reference / runtime |" if ratios else " |"),
        "|---|" + "---:|" * len(names) + ("---:|" if ratios else ""),
    ]
    for st in (*STAGES, "decode_tok_s"):
        cells = []
        for n in names:
            s = sides[n]["stages"][st]
            if st == "decode_tok_s":
                cells.append(f"{s['median']:.2f} tok/s [{s['p10']:.2f} - {s['p90']:.2f}]")
            else:
                cells.append(f"{_ms(s['median'])} [{_ms(s['p10'])} - {_ms(s['p90'])}]")
        if ratios:
            r = ratios.get(st, float("nan"))
            cells.append("-" if not np.isfinite(r) else f"{r:.2f}x")
        label = st + (" (per token)" if st == "decode" else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Tokens, memory, roofline",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(sides[n]) for n in names) + " |")

    row("load (s)", lambda s: f"{s['load_s']:.2f}")
    row("prompt / new tokens", lambda s: f"{s['tokens']['prompt']} / {s['tokens']['new']}")
    row(
        "visual tokens before -> after reduction",
        lambda s: f"{s['tokens']['visual_before_reduction']} -> {s['tokens']['visual_after_reduction']}",
    )
    row("RSS growth when loading this side", lambda s: _fmt_bytes(s["memory"].get("load_growth_bytes")))
    row("largest RSS rise during one run", lambda s: _fmt_bytes(s["memory"].get("run_growth_bytes")))
    row("peak RSS sampled during runs (process)", lambda s: _fmt_bytes(s["memory"]["rss_peak_sampled_bytes"]))
    row(
        "process ru_maxrss (lifetime, whole process)",
        lambda s: _fmt_bytes(s["memory"]["ru_maxrss_process_bytes"]),
    )
    row(
        "GPU memory used (NVML)",
        lambda s: (
            _fmt_bytes(s["memory"]["gpu_used_peak_bytes"])
            if s["memory"]["gpu_used_peak_bytes"] is not None
            else "no NVML GPU"
        ),
    )
    row("bytes read per decoded token", lambda s: _fmt_bytes(s["roofline"]["bytes_per_token"]))
    row("decode bound (tok/s)", lambda s: f"{s['roofline']['bound_tok_s']:.1f}")
    row("measured decode (tok/s)", lambda s: f"{s['roofline']['measured_tok_s']:.2f}")
    row("measured / bound", lambda s: f"{s['roofline']['measured_over_bound_pct']:.1f} %")
    bw = sides["runtime"]["roofline"]["bandwidth_bytes_s"]
    lines += [
        "",
        (
            f"Bandwidth probe: {bw / 1e9:.2f} GB/s (best of 5 single-thread numpy copies of 256 MiB, "
            "read + write counted). The decode bound assumes every token streams the decoder weights "
            "once at their stored precision plus the KV cache at the mean decode context."
        ),
        "",
    ]
    if doc.get("same_tokens") is not None:
        lines += [f"Same greedy tokens on both sides: **{doc['same_tokens']}**.", ""]
    pc = doc.get("plan_check")
    if pc:
        lines += [
            "## Planner vs bundle",
            "",
            "| quantity | planned | measured | measured / planned |",
            "|---|---:|---:|---:|",
        ]
        for k, v in pc.get("rows", {}).items():
            lines.append(
                f"| {k} | {_fmt_bytes(v['planned'])} | {_fmt_bytes(v['measured'])} | {v['ratio']:.3f} |"
            )
        lines += ["", pc.get("note", ""), ""]
    lines += ["## What the stages mean", ""] + [f"- **{k}**: {v}" for k, v in STAGE_HELP.items()] + [""]
    return "\n".join(lines)


PLOT_SIZE_PX = (1400, 600)
_PLOT_DPI = 100


def render_plot(doc: dict[str, Any], path: Path) -> Path:
    """Left: stacked stage breakdown of the median request per side. Right: reference/runtime ratio per stage
    (or, without a reference, measured decode tok/s against the roofline bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = doc["sides"]
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(PLOT_SIZE_PX[0] / _PLOT_DPI, PLOT_SIZE_PX[1] / _PLOT_DPI), dpi=_PLOT_DPI
    )
    parts = ("preprocess", "vision", "reduction", "embed", "prefill", "decode_total")
    colors = plt.get_cmap("tab10").colors
    names = list(sides)
    for i, name in enumerate(names):
        st = sides[name]["stages"]
        steps = sides[name]["tokens"]["decode_steps"]
        left = 0.0
        for j, p in enumerate(parts):
            val = st["decode"]["median"] * steps if p == "decode_total" else st[p]["median"]
            val = 0.0 if not np.isfinite(val) else val * 1e3
            ax1.barh(i, val, left=left, color=colors[j], label=p if i == 0 else None)
            left += val
    ax1.set_yticks(range(len(names)), names)
    ax1.set_xlabel("ms (median run)")
    ax1.set_title("stage breakdown of one request")
    ax1.legend(loc="lower right", fontsize=8)
    ratios = doc["ratios_reference_over_runtime"]
    if ratios:
        keys = [k for k in (*STAGES, "decode_tok_s") if np.isfinite(ratios.get(k, float("nan")))]
        vals = [ratios[k] for k in keys]
        ax2.bar(keys, vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
        ax2.axhline(1.0, color="black", lw=0.8)
        ax2.set_yscale("log")
        ax2.set_ylabel("reference / runtime (>1: runtime faster)")
        ax2.set_title("speed-up of the runtime over the PyTorch reference")
        ax2.tick_params(axis="x", rotation=30)
        for k, v in zip(keys, vals):
            ax2.annotate(f"{v:.2f}x", (keys.index(k), v), ha="center", va="bottom", fontsize=8)
    else:
        roof = {n: sides[n]["roofline"] for n in names}
        xs = np.arange(len(names))
        ax2.bar(xs - 0.2, [roof[n]["measured_tok_s"] for n in names], 0.4, label="measured")
        ax2.bar(xs + 0.2, [roof[n]["bound_tok_s"] for n in names], 0.4, label="bandwidth bound")
        ax2.set_xticks(xs, names)
        ax2.set_ylabel("decode tokens/s")
        ax2.set_title("decode vs roofline")
        ax2.legend()
    fig.suptitle(
        f"{doc['bundle'].get('name', '')} on {doc['machine']['processor']} ({doc['machine']['cpu_count']} "
        f"cores), input {doc['inputs']['preset']}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_PLOT_DPI)
    plt.close(fig)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_outputs(
    doc: dict[str, Any],
    *,
    json_path: Path | None = None,
    markdown_path: Path | None = None,
    plot_path: Path | None = None,
) -> None:
    if json_path is not None:
        check_report(doc)
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        log.info("wrote %s", json_path)
    if markdown_path is not None:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(render_markdown(doc))
        log.info("wrote %s", markdown_path)
    if plot_path is not None:
        render_plot(doc, Path(plot_path))
        log.info("wrote %s", plot_path)


# --------------------------------------------------------------------------------------------------
# Synthetic inputs
# --------------------------------------------------------------------------------------------------

PRESETS = ("text", "image", "volume", "video")


def synthetic_frames(preset: str, frames: int, resolution: int, seed: int = 0) -> np.ndarray | None:
    """uint8 frames [T, H, W, 3] for a preset (None for text). Smooth structure + noise, so images are not
    constant; for volume/video consecutive frames share most of the picture and differ in a moving region,
    so token reduction keeps some tokens and drops others."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if preset == "text":
        return None
    rng = np.random.default_rng(seed)
    t = 1 if preset == "image" else frames
    h = w = resolution
    if preset == "video":
        h = max(28, (resolution * 9 // 16) // 2 * 2)  # 16:9 frames
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 127 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)  # [H, W]
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for k in range(t):
        f = base.copy()
        cy, cx = (h * (0.2 + 0.6 * k / max(t - 1, 1)), w * 0.5)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(h, w) * 0.15) ** 2  # a moving disc
        f[blob] += 80
        f += rng.normal(0, 4, size=f.shape)
        out[k] = np.clip(f, 0, 255).astype(np.uint8)[..., None]  # gray -> [H, W, 1] broadcast to 3 channels
    return out


def write_synthetic_files(preset: str, frames: np.ndarray | None, out_dir: Path) -> list[Path]:
    """Write the frames as the file a user would pass: PNG (image), NIfTI (volume), MP4 (video)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if frames is None:
        return []
    if preset == "image":
        from PIL import Image

        p = out_dir / "image.png"
        Image.fromarray(frames[0]).save(p)
        return [p]
    if preset == "volume":
        import nibabel as nib

        p = out_dir / "volume.nii.gz"
        vol = (
            frames[..., 0].transpose(1, 2, 0).astype(np.int16)
        )  # (T, H, W) -> (H, W, T): axial slices on axis 2
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
        return [p]
    import av

    p = out_dir / "video.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("mpeg4", rate=1)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return [p]


# --------------------------------------------------------------------------------------------------
# The command's entry point
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    preset: str = "image"
    frames: int = 8
    resolution: int = 224
    media_files: tuple[Path, ...] = ()  # image / DICOM / NIfTI / video files instead of a preset
    prompt: str = "Describe the findings."
    max_new_tokens: int = 16
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    compare_reference: bool = False
    checkpoint: Path | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# One request, prepared once and fed identically to both sides
# --------------------------------------------------------------------------------------------------


class ByteIds:
    """Text <-> ids for bundles without a tokenizer (random-weight builds): one id per UTF-8 byte, as the
    byte-level base of Qwen's BPE. Only used to make prompts and print tokens; it never changes timings."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


class _Tok:
    """A `tokenizers` tokenizer.json, as the runtime loads it (no transformers)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._t = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._t.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._t.decode(list(ids), skip_special_tokens=skip_special_tokens))


@dataclass(frozen=True)
class Visual:
    patches: np.ndarray  # [T, n_groups, m*m, 588]
    grid_hw: tuple[int, int]
    merge: int
    modal: str  # image | video (volumes are video, ARCHITECTURE 3.6)
    keep: np.ndarray | None  # [T, n_groups]; None = no reduction


@dataclass(frozen=True)
class Request:
    """A preprocessed request. ids_full holds one image id per merged token (what the reference's merge
    expects); ids_kept one per token kept by reduction (what the runtime's embed piece takes)."""

    visuals: tuple[Visual, ...]
    ids_full: np.ndarray
    ids_kept: np.ndarray


def request_media(cfg: BenchConfig) -> list[Any]:
    """The request's visual inputs: the user's files (read inside the timed preprocess stage, by hulurt's
    readers), or a synthetic preset as already-decoded frames (hulurt.media.Media)."""
    if cfg.media_files:
        return [Path(p) for p in cfg.media_files]
    from hulurt.media import Media

    frames = synthetic_frames(cfg.preset, cfg.frames, cfg.resolution, cfg.seed)
    if frames is None:
        return []
    modal = {"image": "image", "volume": "3d", "video": "video"}[cfg.preset]
    stamps = tuple(float(k) for k in range(frames.shape[0])) if modal == "video" else None  # 1 fps
    return [Media(frames, modal, f"synthetic {cfg.preset}", timestamps=stamps)]


def prepare_request(
    cfg: BenchConfig,
    tok: Any,
    image_id: int,
    reduction: dict[str, Any],
    clock: StageClock,
    media: list[Any],
) -> Request:
    """hulurt.inputs.build_inputs (read, resize, normalise, patchify, chat template, ids) under
    clock("preprocess"); the token-reduction mask and the compaction of the image ids (ARCHITECTURE 6.2,
    6.3) under clock("reduction"). Reduction is done here, not inside build_inputs, to time it apart."""
    from hulurt import reduction as red
    from hulurt.inputs import InputOptions, build_inputs

    with clock("preprocess"):
        mi = build_inputs(
            media, cfg.prompt, tok, image_id, InputOptions(compression=False, threads=cfg.threads)
        )
    ids_full = np.asarray(mi.input_ids[0], dtype=np.int64)  # [1, L] -> [L]
    visuals: list[Visual] = []
    with clock("reduction"):
        keeps = []
        for v in mi.visuals:
            t, nb = v.patches.shape[0], v.patches.shape[1]
            keep = None
            if reduction.get("enabled") and v.modal == "video" and t > 1:
                # (T, G, g, 588) -> (T, G, g*588): one merged token's pixels per row
                keep = red.keep_mask(
                    v.patches.reshape(t, nb, -1),
                    reduction["threshold"],
                    reduction["min_tokens"],
                    reduction["mode"],
                )
            keeps.append(np.ones(t * nb, dtype=bool) if keep is None else keep.reshape(-1))
            _, gh, gw = v.grid_thw
            visuals.append(Visual(v.patches, (gh, gw), v.merge_size, v.modal, keep))
        ids_kept = ids_full
        if keeps:
            is_image = ids_full == image_id
            drop = np.zeros(ids_full.shape, dtype=bool)
            drop[is_image] = ~np.concatenate(keeps)  # image ids in order <-> merged tokens in order
            ids_kept = ids_full[~drop]
    return Request(tuple(visuals), ids_full, ids_kept)


# --------------------------------------------------------------------------------------------------
# Runtime side: hulurt's Generator over onnxruntime sessions, each session timed from the outside
# --------------------------------------------------------------------------------------------------


class TimedSession:
    """Wraps a hulurt Session; records (piece, seconds) of every run / run_bound call in `log`."""

    def __init__(self, inner: Any, piece: str, calls: list[tuple[str, float]]) -> None:
        self._inner, self._piece, self._calls = inner, piece, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self._inner.run(feeds)
        self._calls.append((self._piece, time.perf_counter() - t0))
        return out

    def run_bound(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self._inner.run_bound(*a, **kw)
        self._calls.append((self._piece, time.perf_counter() - t0))
        return out


def piece_weight_bytes(path: Path) -> int:
    """Bytes of the initializers (weights) of one ONNX graph, inline or external, read from the graph
    protobuf alone (external data is not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def bundle_info(bundle: Path) -> tuple[Any, dict[str, Any]]:
    from hulurt.manifest import load_manifest

    m = load_manifest(bundle, verify_hashes=False)
    files = {k: v.bytes for k, v in m.files.items()}
    piece_bytes = {}
    for name, pe in m.pieces.items():
        piece_bytes[name] = files.get(pe.file, 0) + (files.get(pe.data, 0) if pe.data else 0)
    info = {
        "piece_weight_bytes": {name: piece_weight_bytes(m.piece_path(name)) for name in m.pieces},
        "path": str(bundle),
        "name": f"{m.model.get('name', '?')} ({m.dims.layers} decoder layers, {m.precision})",
        "precision": m.precision,
        "target": m.target,
        "dims": dataclasses.asdict(m.dims),
        "piece_bytes": piece_bytes,
        "total_bytes": sum(files.values()),
        "weights": m.model.get("weights"),
    }
    return m, info


def prepare_runtime(cfg: BenchConfig, m: Any, media: list[Any]) -> PreparedSide:
    from hulurt.api import facts_of
    from hulurt.backends.base import BackendOptions, open_session
    from hulurt.generate import Generator, PromptFeed, VisualFeed
    from hulurt.sampling import SamplingConfig

    rss_before = MemorySampler()._rss()
    t0 = time.perf_counter()
    calls: list[tuple[str, float]] = []
    opts = BackendOptions(provider=cfg.extra.get("provider", "auto"), threads=cfg.threads or 0)
    sessions = {name: TimedSession(open_session(m.piece_path(name), opts), name, calls) for name in m.pieces}
    facts = facts_of(m)  # the same numbers hulurt.load() gives its Generator
    gen = Generator(sessions, facts)  # type: ignore[arg-type]
    tok_path = m.file_path(m.tokenizer.tokenizer)
    tok: Any = _Tok(tok_path) if tok_path is not None and tok_path.is_file() else ByteIds()
    load_s = time.perf_counter() - t0
    rss_after = MemorySampler()._rss()
    reduction = dataclasses.asdict(m.reduction)

    def once() -> RunRecord:
        calls.clear()
        clock = StageClock()
        start = time.perf_counter()
        req = prepare_request(cfg, tok, m.tokens.image, reduction, clock, media)
        visuals = tuple(VisualFeed(v.patches, v.grid_hw, v.merge, v.keep) for v in req.visuals)
        g = gen.generate(
            PromptFeed(req.ids_kept, visuals),
            tok,
            max_new_tokens=cfg.max_new_tokens,
            sampling=SamplingConfig(),
            stop_ids=(),
            started=start,
        )
        g.result()
        end = time.perf_counter()
        tm = g.timings
        assert tm is not None
        embeds = [s for p, s in calls if p == "embed"]
        first_embed = embeds[0] if embeds else 0.0
        stages = {
            "preprocess": clock.t.get("preprocess", 0.0),
            "reduction": clock.t.get("reduction", 0.0),
            "vision": sum(s for p, s in calls if p == "vision"),
            "embed": first_embed,
            "prefill": tm.prefill_s - first_embed,
            "ttft": tm.ttft_s,
            "decode": tm.decode_s,
            "e2e": end - start,
        }
        return RunRecord(
            stages,
            tm.decode_steps,
            tm.new_tokens,
            tm.prompt_tokens,
            tm.visual_tokens_before,
            tm.visual_tokens_after,
            tuple(g.token_ids),
        )

    pb = {name: piece_weight_bytes(m.piece_path(name)) for name in ("embed", "decoder") if name in m.pieces}
    act = np.dtype(m.dims.act_dtype).itemsize
    embed_row = pb.get("embed", 0) // max(m.dims.vocab, 1)  # decoding gathers one row of the table
    prov = getattr(sessions["decoder"], "provider", "?")
    return PreparedSide(
        name="runtime",
        description=f"hulurt Generator on onnxruntime ({prov}), {m.dims.act_dtype}",
        load_s=load_s,
        once=once,
        weights_read_per_token_bytes=pb.get("decoder", 0) + embed_row,
        kv_bytes_per_token=2 * m.dims.layers * m.dims.kv_heads * m.dims.head_dim * act,
        rss_before_load=rss_before,
        rss_after_load=rss_after,
        close=sessions.clear,
    )


# --------------------------------------------------------------------------------------------------
# Reference side: the PyTorch model on the same request, same process
# --------------------------------------------------------------------------------------------------


def load_reference(m: Any, checkpoint: Path | None, dtype: str) -> tuple[Any, Any]:
    """The reference HuluMed with the bundle's weights: rebuilt from the manifest's weight record (random
    seed or checkpoint path, layer slice), as `huluexport verify` does."""
    import torch

    from huluexport.checkpoint import from_checkpoint
    from huluexport.config import preset
    from huluexport.export.pipeline import (
        WeightSpec,
        config_from_dict,
        reference_model,
        slice_layers,
        weight_source,
    )

    w = dict(m.model.get("weights") or {})
    cfg_b = config_from_dict({k: v for k, v in m.model.items() if k != "weights"})
    if checkpoint is not None:
        w = {"kind": "checkpoint", "checkpoint": str(checkpoint), "seed": 0, "layers": w.get("layers")}
    if w.get("kind") == "checkpoint":
        full = from_checkpoint(w["checkpoint"])
    elif w.get("kind") == "random":
        full = preset(cfg_b.name)
    else:
        raise ConfigError(
            f"{m.path}: the manifest does not say where the weights came from; pass --checkpoint"
        )
    spec = WeightSpec(w["kind"], w.get("checkpoint"), int(w.get("seed", 0)), w.get("layers"))
    cfg = slice_layers(full, spec.layers)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    return reference_model(cfg, weight_source(full, spec), dtype=torch_dtype), cfg


def prepare_reference(cfg: BenchConfig, m: Any, media: list[Any], dtype: str = "float32") -> PreparedSide:
    import torch

    from huluexport.plan import weight_bytes
    from huluexport.reference.model import VisualInput

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rss_before = MemorySampler()._rss()
    t0 = time.perf_counter()
    model, mcfg = load_reference(m, cfg.checkpoint, dtype)
    load_s = time.perf_counter() - t0
    rss_after = MemorySampler()._rss()
    tok_path = m.file_path(m.tokenizer.tokenizer)
    tok: Any = _Tok(tok_path) if tok_path is not None and tok_path.is_file() else ByteIds()
    enc, km = model.encode, model.keep_mask
    holder = {"model": model}

    @torch.inference_mode()
    def once() -> RunRecord:
        clock = StageClock()
        start = time.perf_counter()
        # the model computes its own keep mask (timed below): no reduction in the shared preprocessing
        req = prepare_request(cfg, tok, m.tokens.image, {"enabled": False}, clock, media)

        def timed_encode(v: Any) -> Any:
            with clock("vision"):
                return enc(v)

        def timed_keep(v: Any) -> Any:
            with clock("reduction"):
                return km(v)

        model.encode, model.keep_mask = timed_encode, timed_keep  # instance attributes: timing only
        visuals = [
            # (T, G, g, 588) -> (T, n, 588): merge-grouped token order, as the reference takes it
            VisualInput(
                v.patches.reshape(v.patches.shape[0], -1, v.patches.shape[-1]), v.grid_hw, v.merge, v.modal
            )
            for v in req.visuals
        ]
        t_prep = time.perf_counter()
        prep = model.prepare_inputs(torch.from_numpy(req.ids_full), visuals)
        clock.t["embed"] = (
            time.perf_counter() - t_prep - clock.t.get("vision", 0.0) - clock.t.get("reduction", 0.0)
        )
        with clock("prefill"):
            logits, past = model.decoder(prep.inputs_embeds, prep.position_ids)
            tok_id = int(torch.argmax(logits[0, -1].float()))
        t_first = time.perf_counter()
        out = [tok_id]
        pos = prep.inputs_embeds.shape[1]
        for _ in range(cfg.max_new_tokens - 1):
            emb = model.decoder.embed(torch.tensor([[tok_id]], dtype=torch.int64))
            logits, past = model.decoder(emb, torch.tensor([[pos]], dtype=torch.int64), past)
            tok_id = int(torch.argmax(logits[0, -1].float()))
            out.append(tok_id)
            pos += 1
        end = time.perf_counter()
        clock.t["ttft"], clock.t["decode"], clock.t["e2e"] = t_first - start, end - t_first, end - start
        for st in STAGES:
            clock.t.setdefault(st, 0.0)  # e.g. no vision call for a text-only request
        n_vis = int(prep.keep.size)
        return RunRecord(
            dict(clock.t),
            len(out) - 1,
            len(out),
            int(prep.input_ids.numel()),
            n_vis,
            int(prep.keep.sum()),
            tuple(out),
        )

    def close() -> None:
        model.encode, model.keep_mask = enc, km
        holder.clear()

    prec = "fp32" if dtype == "float32" else "bf16"
    wb = weight_bytes(mcfg, prec)
    return PreparedSide(
        name="reference",
        description=f"huluexport.reference PyTorch {torch.__version__} ({dtype}, "
        f"{torch.get_num_threads()} threads), same process",
        load_s=load_s,
        once=once,
        weights_read_per_token_bytes=wb.read_per_decoded_token,
        kv_bytes_per_token=mcfg.decoder.kv_bytes_per_token(4 if dtype == "float32" else 2),
        rss_before_load=rss_before,
        rss_after_load=rss_after,
        close=close,
    )


# --------------------------------------------------------------------------------------------------
# Planner check and the entry point
# --------------------------------------------------------------------------------------------------


def plan_check(m: Any, info: dict[str, Any], runtime: SideResult) -> dict[str, Any]:
    """Planned weight bytes (huluexport.plan) vs the bundle's graphs and files; planned memory vs RSS."""
    from huluexport.export.pipeline import config_from_dict
    from huluexport.plan import weight_bytes

    cfg = config_from_dict({k: v for k, v in m.model.items() if k != "weights"})
    wb = weight_bytes(cfg, m.precision)
    pb, pw = info["piece_bytes"], info["piece_weight_bytes"]
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, planned: float, measured: float) -> None:
        rows[name] = {
            "planned": int(planned),
            "measured": int(measured),
            "ratio": float(measured / planned) if planned else float("nan"),
        }

    add("vision piece initializers (vision + projector)", wb.vision + wb.projector, pw.get("vision", 0))
    add("embed + decoder initializers (decoder)", wb.decoder, pw.get("embed", 0) + pw.get("decoder", 0))
    add(
        "decoder weights read per decoded token",
        wb.read_per_decoded_token,
        pw.get("decoder", 0) + pw.get("embed", 0) // max(cfg.decoder.vocab, 1),
    )
    add("bundle files on disk (graphs + weights)", wb.total, sum(pb.values()))
    mem = runtime.memory
    last = runtime.records[-1]
    kv = runtime.kv_bytes_per_token * (last.prompt_tokens + last.new_tokens)
    add(
        "runtime RSS growth (load + largest run) vs planned weights + KV",
        wb.total + kv,
        mem["load_growth_bytes"] + mem["run_growth_bytes"],
    )
    return {
        "precision": m.precision,
        "rows": rows,
        "note": "Planned = huluexport.plan.weight_bytes of the bundle's (sliced) config at its precision; "
        "initializer bytes are read from the ONNX graphs (external data lengths). Disk sizes add the graph "
        "protobufs. RSS growth = RSS after opening the sessions minus before, plus the largest rise of RSS "
        "during one timed run (activations, KV, arenas). onnxruntime memory-maps external weight files, so "
        "weights that a request never touches (most rows of the embedding table) need not be resident.",
    }


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the runtime (and optionally the reference) on one request; return the report dict.

    With --compare-reference both sides are loaded and their runs alternate (interleaved, the default), or,
    with `sequential`, the runtime is measured and closed before the reference is loaded (half the memory)."""
    import gc

    from huluexport.plan import probe_memory_bandwidth

    m, info = bundle_info(cfg.bundle)
    media = request_media(cfg)
    sequential = bool(cfg.extra.get("sequential", False))
    log.info("bench: loading the runtime for %s", cfg.bundle)
    rt_side = prepare_runtime(cfg, m, media)
    ref = None
    if cfg.compare_reference and not sequential:
        log.info("bench: loading the PyTorch reference (interleaved runs)")
        ref_side = prepare_reference(cfg, m, media)
        res = measure_sides([rt_side, ref_side], cfg.warmup, cfg.repeats)
        rt, ref = res["runtime"], res["reference"]
        ref_side.close()
    else:
        rt = measure_sides([rt_side], cfg.warmup, cfg.repeats)["runtime"]
        if cfg.compare_reference:
            rt_side.close()
            gc.collect()
            log.info("bench: loading the PyTorch reference (sequential runs)")
            ref_side = prepare_reference(cfg, m, media)
            ref = measure_sides([ref_side], cfg.warmup, cfg.repeats)["reference"]
            ref_side.close()
    bw = probe_memory_bandwidth()
    inputs = {
        "preset": "files" if cfg.media_files else cfg.preset,
        "frames": cfg.frames if cfg.preset in ("volume", "video") else (1 if cfg.preset == "image" else 0),
        "resolution": cfg.resolution,
        "files": [str(p) for p in cfg.media_files],
        "prompt": cfg.prompt,
        "max_new_tokens": cfg.max_new_tokens,
        "stop_ids": "none (every run decodes exactly max_new_tokens on both sides)",
    }
    settings = {
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "threads": cfg.threads,
        "order": "sequential" if sequential or ref is None else "interleaved (runtime, reference, ...)",
    }
    return build_report(
        runtime=rt,
        reference=ref,
        bandwidth_bytes_s=bw,
        bundle=info,
        inputs=inputs,
        settings=settings,
        plan_check=plan_check(m, info, rt),
    )
