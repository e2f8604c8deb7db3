"""Three views of a report: a rich table for the terminal, Markdown, and a PNG."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from huluexport.bench.schema import STAGE_HELP, STAGES


def _ms(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x * 1e3:.1f}"


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "n/a"
    from huluexport.plan import fmt_bytes

    return fmt_bytes(n)


def _bandwidth_source(doc: dict[str, Any]) -> str:
    """Where the roofline's bandwidth came from (reports from before `--target`: the host probe)."""
    src = doc["settings"].get("bandwidth_source", "measured: best-of-5 single-thread numpy copy of 256 MiB")
    return f"target {doc['settings'].get('target', 'cpu')}, {src}"


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
        f"memory bandwidth: {bw / 1e9:.2f} GB/s ({_bandwidth_source(doc)}); machine: "
        f"{doc['machine']['processor']}, {doc['machine']['cpu_count']} cores"
    )
    if doc.get("same_tokens") is not None:
        foot += f"; same greedy tokens on both sides: {doc['same_tokens']}"
    if doc.get("greedy_check"):
        foot += f"\ngreedy check: {doc['greedy_check']['summary']}"
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
            f"Memory bandwidth: {bw / 1e9:.2f} GB/s ({_bandwidth_source(doc)}). The decode bound assumes "
            "every token streams the decoder weights once at their stored precision plus the KV cache at the "
            "mean decode context."
        ),
        "",
    ]
    if doc.get("same_tokens") is not None:
        lines += [f"Same greedy tokens on both sides: **{doc['same_tokens']}**.", ""]
    if doc.get("greedy_check"):
        lines += [f"Greedy check (one more untimed run per side, logits kept): {doc['greedy_check']['summary']}.",
                  ""]
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
