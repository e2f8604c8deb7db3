"""The report's schema (`huluexport.bench/1`): stage names in pipeline order, what each one spans, and
`check_report`, which names the first field a report gets wrong."""

from __future__ import annotations

from typing import Any

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
    gc = doc.get("greedy_check")
    if gc is not None:
        for k, kind in (("steps", int), ("same_prefix_steps", int), ("max_abs_logit_diff", list),
                        ("reference_top2_margin", list), ("runtime_top2_margin", list), ("summary", str)):
            need(gc, k, kind, "greedy_check")
        if gc.get("first_divergence") is not None:
            d = need(gc, "divergence", dict, "greedy_check")
            for k, kind in (("step", int), ("reference_gap", float), ("runtime_gap", float), ("near_tie", bool)):
                need(d, k, kind, "greedy_check.divergence")
