"""Trace + fold time of `build`'s layered pieces, every layer traced vs 3 traced and the rest cloned
(huluexport/export/passes/replicate_layers.py), side by side in one process. Nothing is saved: the graphs stop
before the weights are written (random weights, lazily attached, never read).

    python benchmarks/bench_trace_fold.py --size 7b --precision fp16 [--pieces vision,decoder] [--out result.json]

Per piece and path: wall and CPU seconds of the trace + passes (huluexport.export.pipeline.piece_graph), node
and initializer counts (equal between the paths, or the script fails).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from huluexport.config import preset, slice_layers
from huluexport.export import pieces as P
from huluexport.export.passes import replicate_layers
from huluexport.export.pipeline import WeightSpec, piece_graph, weight_source
from huluexport.reference.model import HuluMed


def one(name: str, cfg, trace_cfg, precision: str, source) -> dict:
    with torch.device("meta"):
        model = HuluMed(trace_cfg)
    forms = ("gqa-static",) if name == "decoder_gqa" else ("v1-concat",)
    module = P.to_precision(P.make_pieces(model, forms)[name], precision, copy_first=False)
    t0, c0 = time.perf_counter(), time.process_time()
    g = piece_graph(name, module, cfg, precision, source, trace_cfg=trace_cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "nodes": len(list(g.graph)),
            "initializers": len(g.graph.initializers), "inputs": len(g.graph.inputs), "outputs": len(g.graph.outputs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--pieces", default="vision,decoder")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = slice_layers(preset(a.size), a.layers)
    source = weight_source(preset(a.size), WeightSpec("random", None, 0, a.layers))
    rows = []
    for name in a.pieces.split(","):
        res = {"piece": name, "load_before": os.getloadavg()[0]}
        res["traced"] = one(name, cfg, cfg, a.precision, source)
        res["replicated"] = one(name, cfg, replicate_layers.shallow(cfg), a.precision, source)
        res["load_after"] = os.getloadavg()[0]
        for k in ("nodes", "initializers", "inputs", "outputs"):
            if res["traced"][k] != res["replicated"][k]:
                raise SystemExit(f"{name}: {k} differ: {res['traced'][k]} traced, {res['replicated'][k]} replicated")
        rows.append(res)
        print(json.dumps(res), flush=True)
    out = {"size": a.size, "precision": a.precision, "layers": [cfg.vision.layers, cfg.decoder.layers],
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__, "rows": rows}
    print("piece        traced (wall / cpu s)   replicated (wall / cpu s)   ratio")
    for r in rows:
        t, p = r["traced"], r["replicated"]
        print(f"{r['piece']:<12} {t['wall_s']:>8.1f} / {t['cpu_s']:<8.1f}      {p['wall_s']:>8.1f} / {p['cpu_s']:<8.1f}"
              f"       {t['wall_s'] / p['wall_s']:.1f}x")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
