"""The plan as rich tables for the terminal."""

from __future__ import annotations

from typing import Any

from huluexport.devices import GiB
from huluexport.plan.planner import Plan


def fmt_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, div in (("GiB", GiB), ("MiB", 2**20), ("KiB", 1024)):
        if n >= div:
            return f"{sign}{n / div:.2f} {unit}"
    return f"{sign}{int(n)} B"


def render_plan(p: Plan) -> Any:
    """A rich renderable (Group of tables) for the terminal."""
    from rich.console import Group
    from rich.table import Table

    verdict = "[bold green]FITS[/]" if p.fits else "[bold red]DOES NOT FIT[/]"
    if not p.supported:
        verdict = f"[bold red]NOT SUPPORTED[/] ({p.precision} is not native here; memory would be)"
    head = Table(title=f"huluexport plan: {p.size} on {p.device_name}, {p.precision}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    inp = p.input
    what = (
        inp["kind"]
        if inp["kind"] == "text"
        else (
            f"{inp['kind']} {inp['frames']}x{inp['width']}x{inp['height']} "
            f"-> resized {p.resized_hw[1]}x{p.resized_hw[0]}"
        )
    )
    head.add_row("input", what)
    head.add_row(
        "tokens",
        f"{p.visual_tokens} visual + {p.prompt_tokens - p.visual_tokens} text = {p.prompt_tokens} "
        f"prompt; +{inp['max_new_tokens']} new = {p.context_tokens} context",
    )
    head.add_row(
        "verdict",
        f"{verdict}: needs {fmt_bytes(p.memory['total'])} of {fmt_bytes(p.usable_bytes)} usable "
        f"(margin {fmt_bytes(p.margin_bytes)})",
    )
    mem = Table(title="memory")
    mem.add_column("part")
    mem.add_column("bytes", justify="right")
    mem.add_column("size", justify="right")
    for k, v in p.memory.items():
        mem.add_row(k, f"{v:,}", fmt_bytes(v))
    mem.add_row("usable on device", f"{p.usable_bytes:,}", fmt_bytes(p.usable_bytes))
    perf = Table(title="limits and speed (upper bounds / estimates)", show_header=False)
    perf.add_column(style="bold")
    perf.add_column()
    perf.add_row(
        "weights (vision+proj / decoder)",
        f"{fmt_bytes(p.weights['vision'] + p.weights['projector'])} / {fmt_bytes(p.weights['decoder'])}",
    )
    perf.add_row("KV cache per token", fmt_bytes(p.kv_bytes_per_token))
    perf.add_row("largest text-only context that fits", f"{p.largest_context_tokens:,} tokens")
    lim = p.largest_volume_search_limit
    vol = f">= {lim}" if p.largest_volume_slices >= lim else str(p.largest_volume_slices)
    perf.add_row(
        "largest 512x512 volume that fits",
        f"{vol} slices (every count up to {p.volume_slices_all_fit_up_to} fits)",
    )
    perf.add_row(
        "decode tok/s bound (first / last token)",
        f"{p.decode_tok_s_bound_first:.1f} / {p.decode_tok_s_bound_last:.1f}",
    )
    perf.add_row(
        "time to first token (est.)",
        f"{p.ttft_estimate_s * 1e3:.0f} ms (vision "
        f"{p.ttft_parts_s['vision'] * 1e3:.0f} + prefill {p.ttft_parts_s['prefill'] * 1e3:.0f}) at 100% of "
        f"peak {p.compute_precision}",
    )
    perf.add_row(
        "schedule",
        ("fused (flash) attention" if p.fused_attention else "unfused attention")
        + f" (unfused scores would need {fmt_bytes(p.attention_scores_unfused_bytes)}); vision batch "
        f"{p.vision_batch_frames or 'all'} frames; prefill chunk {p.prefill_chunk_tokens or 'whole prompt'}",
    )
    notes = Table(title="notes and sources", show_header=False)
    notes.add_column()
    for n in p.notes:
        notes.add_row(n)
    for k, s in p.sources.items():
        notes.add_row(f"{k}{' (estimate)' if k in p.estimates else ''}: {s}")
    return Group(head, mem, perf, notes)
