"""`huluexport bench`: per-stage latency (median and spread after warm-up), memory, roofline, and reports.

A *side* (the runtime, or the PyTorch reference on the same request in the same process) runs one request per
call and returns a RunRecord of stage seconds; `measure_sides` alternates the sides. Parts: `schema` (stage
names, `check_report`), `measure` (records, statistics, memory, roofline), `inputs` (the request: synthetic
frames or files), `runtime_side`, `reference_side`, `report` (JSON) and `render` (terminal, Markdown, PNG),
`run` (the command's entry point). This module re-exports their public names.
"""

from __future__ import annotations

from huluexport.bench.config import BenchConfig
from huluexport.bench.inputs import PRESETS, synthetic_frames, write_synthetic_files
from huluexport.bench.measure import (
    MemorySampler,
    PreparedSide,
    RunRecord,
    SideResult,
    Stat,
    measure,
    measure_sides,
    roofline,
    stage_stats,
)
from huluexport.bench.render import PLOT_SIZE_PX, render_markdown, render_plot, render_report
from huluexport.bench.report import build_report, machine_info, write_outputs
from huluexport.bench.run import run_bench
from huluexport.bench.schema import SCHEMA, STAGE_HELP, STAGES, check_report

__all__ = [
    "PLOT_SIZE_PX",
    "PRESETS",
    "SCHEMA",
    "STAGES",
    "STAGE_HELP",
    "BenchConfig",
    "MemorySampler",
    "PreparedSide",
    "RunRecord",
    "SideResult",
    "Stat",
    "build_report",
    "check_report",
    "machine_info",
    "measure",
    "measure_sides",
    "render_markdown",
    "render_plot",
    "render_report",
    "roofline",
    "run_bench",
    "stage_stats",
    "synthetic_frames",
    "write_outputs",
    "write_synthetic_files",
]
