"""The JSON-ready report of one benchmark (schema in huluexport/bench/schema.py) and writing it out."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from huluexport.bench.measure import SideResult, Stat, roofline
from huluexport.bench.render import render_markdown, render_plot
from huluexport.bench.schema import SCHEMA, STAGE_HELP, STAGES, check_report

log = logging.getLogger(__name__)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the machine line of a report."""
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
    greedy: dict[str, Any] | None = None,
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
        "greedy_check": greedy,  # huluexport/bench/greedy_check.py; None without a reference
        "plan_check": plan_check,
    }


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
