"""The report of scripts/gpu_bench.py (docs/gpu.md): Markdown and PNG from the saved results (gpu_bench.json),
the 28-layer extrapolation with every term shown. Reads only the result dict: the `huluexport bench` JSON of
each run (schema huluexport/bench/schema.py), the copy bandwidth and the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FULL_LAYERS = 28  # Hulu-Med-7B decoder (Qwen2.5-7B)
SIDES = ("runtime", "reference")


def save(out: Path, result: dict[str, Any]) -> None:
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")


def med(rep: dict[str, Any], side: str, stage: str) -> float | None:
    try:
        return float(rep["sides"][side]["stages"][stage]["median"])
    except (KeyError, TypeError):
        return None


def tok_s(rep: dict[str, Any], side: str) -> float | None:
    try:
        return float(rep["sides"][side]["roofline"]["measured_tok_s"])
    except (KeyError, TypeError):
        return None


def extrapolate(r2: dict[str, Any], r4: dict[str, Any], side: str, bw: float) -> dict[str, Any] | None:
    """Per-token decode time and bytes of the 28-layer model from the 2- and 4-layer slices (linear in L):
    t(28) = t(2) + 26 (t(4) - t(2)) / 2, W(28) = W(2) + 26 (W(4) - W(2)) / 2 + one embedding row, KV bytes
    per layer from the 4-layer run. `valid` is False when t(4) <= t(2) (the per-layer time is below the noise):
    then no 28-layer time, rate or fraction is given."""
    s2, s4 = tok_s(r2, side), tok_s(r4, side)
    if not s2 or not s4:
        return None
    t2, t4 = 1 / s2, 1 / s4
    per_layer = (t4 - t2) / 2
    t28 = t2 + (FULL_LAYERS - 2) * per_layer
    desc = r4["sides"][side].get("description", "")
    # the reference reads the same fp16 matrices as the runtime's graphs; count them from the v1 decoder graph
    piece = "decoder_gqa" if side == "runtime" and "decoder_gqa" in desc else "decoder"
    w2 = r2["bundle"]["piece_weight_bytes"][piece]
    w4 = r4["bundle"]["piece_weight_bytes"][piece]
    emb_row = r4["bundle"]["piece_weight_bytes"]["embed"] / r4["bundle"]["dims"]["vocab"]
    layer_bytes = (w4 - w2) / 2
    w28 = w2 + (FULL_LAYERS - 2) * layer_bytes + emb_row
    kv_per_layer = r4["sides"][side]["roofline"]["kv_bytes_per_token_at_mean_context"] / r4["bundle"]["dims"]["layers"]
    kv = kv_per_layer * FULL_LAYERS
    bytes28 = w28 + kv
    valid = per_layer > 0 and bw > 0
    bound_s = bytes28 / bw if bw > 0 else float("nan")
    return {
        "piece": piece, "valid": valid,
        "t2_ms": t2 * 1e3, "t4_ms": t4 * 1e3, "per_layer_ms": per_layer * 1e3, "t28_ms": t28 * 1e3,
        "tok_s_28": 1 / t28 if valid else None, "weights_2": w2, "weights_4": w4, "layer_bytes": layer_bytes,
        "embed_row_bytes": emb_row, "kv_bytes_28": kv, "bytes_per_token_28": bytes28,
        "bound_ms": bound_s * 1e3, "fraction_of_bound": bound_s / t28 if valid else None,
    }


def _header(result: dict[str, Any], B: dict[str, Any], bw: float) -> list[str]:
    env, copy = result.get("environment", {}), result.get("copy", {})
    if result.get("mode") == "cpu-rehearsal":
        lines = ["# CPU REHEARSAL of the GPU measurement: no GPU figure (onnxruntime CPU provider, reference on the "
                 "CPU in fp16)", "",
                 ("This checks that scripts/gpu_bench.py's steps, report, extrapolation and plot run in this package "
                  "set; every number below is this host's, with small inputs (bench options capped at "
                  f"{result.get('rehearsal_caps')}), and says nothing about a GPU."), ""]
        bw_what = "Host memory copy bandwidth (not a GPU's)"
    else:
        lines = ["# hulurt on a CUDA GPU vs the PyTorch reference (fp16, batch 1)", ""]
        bw_what = "Measured device-to-device copy bandwidth"
    orders = sorted({rep["settings"].get("order", "?") for rep in B.values() if "reference" in rep["sides"]})
    lines += [(f"Machine: {env.get('gpu')} ({env.get('nvidia_smi')}), {env.get('cpu_count')} CPUs, onnxruntime "
               f"{env.get('onnxruntime')} ({', '.join(env.get('providers', []))}), torch {env.get('torch')} (CUDA "
               f"{env.get('torch_cuda')}), python {env.get('python')}, {env.get('packages')}, load average "
               f"{' '.join(f'{x:.2f}' for x in env.get('load', ()))}, date {env.get('date_utc')}."),
              (f"{bw_what}: {bw / 1e12:.3f} TB/s ({copy.get('method')})." if bw else
               f"{bw_what}: FAILED ({copy.get('error')}); no bound is computed."),
              *([f"Operator check before measuring (scripts/gpu_smoke.py): {result['smoke']}"]
                if result.get("smoke") else []),
              ("Random weights (seed 0), 7B width; b4 = 4 decoder layers + 27 vision layers, b2 = 2 + 1. Greedy, "
               "no stop ids; medians of 3 runs after 1 warm-up; runtime and reference in one process, order: "
               f"{'; '.join(orders) or 'no reference run'}."), ""]
    return lines


def _same(rep: dict[str, Any]) -> str:
    """The runs table's token cell: the timed runs' agreement, and the greedy check's first divergence."""
    gc = rep.get("greedy_check")
    if not gc:
        return str(rep.get("same_tokens"))
    if gc.get("first_divergence") is None:
        return f"{rep.get('same_tokens')}; {gc['steps']} of {gc['steps']} checked steps"
    d = gc["divergence"]
    return (f"{rep.get('same_tokens')}; first divergence at step {d['step']} of {gc['steps']} "
            f"({'near tie' if d['near_tie'] else 'NOT a near tie'}: gaps {d['reference_gap']:.3g} / "
            f"{d['runtime_gap']:.3g}, logits differ by {d['max_abs_logit_diff_at_step']:.3g})")


def _runs_table(result: dict[str, Any], B: dict[str, Any]) -> list[str]:
    lines = ["## Runs", "", ("| run | side | decode tok/s | TTFT ms | vision ms | prefill ms | prompt tok | "
             "visual tok | same tokens |"), "|---|---|---|---|---|---|---|---|---|"]
    for name, rep in B.items():
        for side in SIDES:
            if side not in rep["sides"]:
                continue
            t = rep["sides"][side]["tokens"]
            lines.append(
                f"| {name} | {side}: {rep['sides'][side]['description']} | {(tok_s(rep, side) or 0):.1f} | "
                f"{(med(rep, side, 'ttft') or 0) * 1e3:.1f} | {(med(rep, side, 'vision') or 0) * 1e3:.1f} | "
                f"{(med(rep, side, 'prefill') or 0) * 1e3:.1f} | {t['prompt']} | "
                f"{t['visual_before_reduction']} -> {t['visual_after_reduction']} | {_same(rep)} |")
    for name, v in result.get("benches", {}).items():
        if not v.get("report"):
            lines.append(f"| {name} | FAILED rc={v.get('rc')} {v.get('error', '')} (gpu_bench.log) | | | | | | | |")
    if result.get("skipped"):
        lines += ["", f"Not run (the time budget was spent): {', '.join(result['skipped'])}."]
    return lines


def _extrapolation(B: dict[str, Any], bw: float, rehearsal: bool) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    ext: dict[str, Any] = {}
    if not ("text_b2" in B and "text_b4" in B):
        return ["", "No 28-layer extrapolation: it needs both text_b2 and text_b4."], ext
    lines += ["", "## Full 7B (28 layers) extrapolated from the 2- and 4-layer slices", ""]
    for side in SIDES:
        e = extrapolate(B["text_b2"], B["text_b4"], side, bw)
        if e is None:
            continue
        ext[side] = e
        head = (f"**{side}**: t(2) = {e['t2_ms']:.3f} ms, t(4) = {e['t4_ms']:.3f} ms per token; per layer "
                f"(t(4) - t(2)) / 2 = {e['per_layer_ms']:.4f} ms; ")
        lines.append(head + (f"t(28) = t(2) + 26 x {e['per_layer_ms']:.4f} = {e['t28_ms']:.3f} ms -> "
                             f"{e['tok_s_28']:.1f} tok/s." if e["valid"] else
                             "t(4) <= t(2): the per-layer time is below the noise of these runs, so no 28-layer "
                             "time, rate or fraction of the bound is given."))
        lines.append(f"Bytes per token ({e['piece']} graph): decoder weights W(2) = {e['weights_2'] / 1e9:.4f} GB, "
                     f"W(4) = {e['weights_4'] / 1e9:.4f} GB, per layer (W(4) - W(2)) / 2 = "
                     f"{e['layer_bytes'] / 1e6:.2f} MB; W(28) = W(2) + 26 x layer + embedding row "
                     f"{e['embed_row_bytes']:.0f} B; KV read at the mean context {e['kv_bytes_28'] / 1e6:.3f} MB; "
                     f"total {e['bytes_per_token_28'] / 1e9:.4f} GB.")
        if e["valid"]:
            lines.append(f"Bound = {e['bytes_per_token_28'] / 1e9:.4f} GB / {bw / 1e12:.3f} TB/s = "
                         f"{e['bound_ms']:.3f} ms; fraction of the bandwidth bound reached = {e['bound_ms']:.3f} / "
                         f"{e['t28_ms']:.3f} = **{100 * e['fraction_of_bound']:.1f} %** "
                         + ("(host figures: the GPU target does not apply)." if rehearsal else
                            "(target >= 85 % for the runtime)."))
        lines.append("")
    if all(s in ext and ext[s]["valid"] for s in SIDES):
        ratio = ext["runtime"]["tok_s_28"] / ext["reference"]["tok_s_28"]
        lines.append(f"Runtime over the PyTorch reference ({'CPU, fp16' if rehearsal else 'eager fp16'}), 28 layers: "
                     f"{ext['runtime']['tok_s_28']:.1f} / {ext['reference']['tok_s_28']:.1f} = {ratio:.2f}x.")
    return lines, ext


TARGET_FRACTION = 0.85  # issue 10: decode at >= 85 % of the bandwidth bound (full-7B extrapolation)
TARGET_STEPS = 16  # greedy tokens identical to the reference for 16 steps, or the first divergence explained


def _targets(B: dict[str, Any], ext: dict[str, Any], rehearsal: bool) -> list[str]:
    """Issue 10's targets, each met or not with its number (none apply to a CPU rehearsal)."""
    lines = ["", "## Against the targets", ""]
    if rehearsal:
        return lines + ["CPU rehearsal: the GPU targets do not apply; nothing below this line is a GPU figure."]
    rt, ref = ext.get("runtime"), ext.get("reference")

    def met(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**NOT met**")

    frac = rt["fraction_of_bound"] if rt and rt["valid"] else None
    lines.append(f"- Decode at >= {TARGET_FRACTION:.0%} of the bandwidth bound, 28 layers extrapolated: "
                 f"{met(None if frac is None else frac >= TARGET_FRACTION)}"
                 + (f" ({100 * frac:.1f} %)." if frac is not None else "."))
    fast = None
    if rt and ref and rt["valid"] and ref["valid"]:
        fast = rt["tok_s_28"] / ref["tok_s_28"]
    lines.append(f"- Faster than PyTorch eager fp16 on the same GPU, 28 layers extrapolated: "
                 f"{met(None if fast is None else fast > 1)}" + (f" ({fast:.2f}x)." if fast is not None else "."))
    for name, rep in B.items():
        gc = rep.get("greedy_check")
        if not gc:
            continue
        first = gc["first_divergence"]
        ok = (first is None and gc["steps"] >= TARGET_STEPS) or (first is not None and (
            first >= TARGET_STEPS or gc["divergence"]["near_tie"]))
        what = (f"identical for {gc['steps']} steps" if first is None else
                f"first divergence at step {first}, " + ("a near tie" if gc["divergence"]["near_tie"] else
                                                          "NOT a near tie"))
        lines.append(f"- {name}: greedy tokens identical for {TARGET_STEPS} steps or the first divergence "
                     f"explained: {met(ok)} ({what}).")
    return lines


def _sampling(entry: dict[str, Any] | None) -> list[str]:
    """The per-token cost of a sampled token: the sampling graph on the provider vs the row to the host sampler
    (benchmarks/bench_device_sampling.py; its own .md is in the same folder)."""
    if not entry:
        return []
    rep = entry.get("report")
    if not rep:
        return ["", f"Sampling on the device vs the host: not measured (rc {entry.get('rc')}, log: sampling.log)."]
    lines = ["", f"## A sampled token: sampling graph on `{rep['meta']['provider']}` vs the row to the host sampler",
             "", "| rows | sampling | fallback rows | host ms | device ms | host / device |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rep["results"]:
        s = r["sides"]
        lines.append(f"| {r['rows']} | {r['config']} | {r['host_fallback_rows']}/{r['rows_checked']} | "
                     f"{s['host']['median_ms']:.3f} | {s['device']['median_ms']:.3f} | {r['speedup']:.2f}x |")
    return lines


def report(result: dict[str, Any], out: Path) -> None:
    """gpu_bench.md and gpu_bench.png in `out`; the extrapolation is added to the result and gpu_bench.json."""
    rehearsal = result.get("mode") == "cpu-rehearsal"
    bw = float(result.get("copy", {}).get("bandwidth_bytes_s", 0.0))
    B = {k: v["report"] for k, v in result.get("benches", {}).items() if v.get("report")}
    lines = _header(result, B, bw) + _runs_table(result, B)
    more, ext = _extrapolation(B, bw, rehearsal)
    lines += more
    for name in ("ct160_b4", "video60_b4"):
        rep = B.get(name)
        if rep:
            lines += ["", f"TTFT split, {name}: " + "; ".join(
                f"{side} vision {(med(rep, side, 'vision') or 0) * 1e3:.0f} ms + prefill "
                f"{(med(rep, side, 'prefill') or 0) * 1e3:.0f} ms of TTFT {(med(rep, side, 'ttft') or 0) * 1e3:.0f} ms"
                for side in rep["sides"])]
    if "ct160_b2" in B and "ct160_b4" in B:
        p2, p4 = med(B["ct160_b2"], "runtime", "prefill"), med(B["ct160_b4"], "runtime", "prefill")
        if p2 and p4:
            p28 = p2 + (FULL_LAYERS - 2) * (p4 - p2) / 2
            lines.append("")
            lines.append(f"Runtime CT prefill, 28 layers: {p2 * 1e3:.1f} + 26 x ({p4 * 1e3:.1f} - {p2 * 1e3:.1f}) / 2"
                         f" = {p28 * 1e3:.1f} ms.")
    lines += _targets(B, ext, rehearsal)
    checks = [(n, rep["greedy_check"]) for n, rep in B.items() if rep.get("greedy_check")]
    if checks:
        lines += ["", "## Greedy agreement with the reference (one more untimed run per side, logits kept)", ""]
        lines += [f"- {n}: {gc['summary']}." for n, gc in checks]
    lines += ["", f"GPU tests (tests/gpu) exit status: {result.get('gpu_tests_rc')} (log: pytest_gpu.log)."]
    lines += _sampling(result.get("sampling"))
    result["extrapolation"] = ext
    save(out, result)
    (out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    title = lines[0].lstrip("# ")
    plot(B, ext, out / "gpu_bench.png", title)


def plot(B: dict[str, Any], ext: dict[str, Any], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    fig.suptitle(title, fontsize=10)
    names = [n for n in ("text_b2", "text_b4") if n in B]
    colors = {"runtime": "tab:blue", "reference": "tab:orange"}
    valid = [s for s in SIDES if s in ext and ext[s]["valid"]]
    for i, side in enumerate(SIDES):
        axes[0].bar([j + 0.4 * i for j in range(len(names))], [(tok_s(B[n], side) or 0) for n in names], width=0.4,
                    label=side, color=colors[side])
        if side in valid:  # hatched: extrapolated, not measured
            axes[0].bar([len(names) + 0.4 * i], [ext[side]["tok_s_28"]], width=0.4, color=colors[side], hatch="//")
    labels = [*names, *(["28 layers (extrapolated)"] if valid else [])]
    axes[0].set_xticks([j + 0.2 for j in range(len(labels))], labels)
    axes[0].set_ylabel("decode tokens/s")
    axes[0].legend()
    rows = [(n, s) for n in ("ct160_b4", "video60_b4") if n in B for s in B[n]["sides"]]
    for k, (n, s) in enumerate(rows):
        v, p = (med(B[n], s, "vision") or 0) * 1e3, (med(B[n], s, "prefill") or 0) * 1e3
        axes[1].barh(k, v, color="tab:blue")
        axes[1].barh(k, p, left=v, color="tab:orange")
    axes[1].set_yticks(range(len(rows)), [f"{n} {s}" for n, s in rows])
    axes[1].set_xlabel("ms (blue vision, orange prefill)")
    if not rows:
        axes[1].text(0.5, 0.5, "no CT / video run", ha="center", va="center", transform=axes[1].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
