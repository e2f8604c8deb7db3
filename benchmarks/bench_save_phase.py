"""The save + hash phase of `build` alone, old settings against new, side by side in one run (issue 15 item 2).

Takes the first N decoder layers and the embedding of a bf16 checkpoint (e.g. `huluexport init-checkpoint
--size 7b`), attaches them to a graph of Identity nodes as lazy initializers (the way
huluexport/export/passes/attach_weights.py does), and saves it as fp16 with external data:

- old: safe_open + get_tensor per tensor, cast, ir.save(max_workers=1, max_in_flight_bytes=256 MiB), then
  every written file hashed in a separate read (the code before this change);
- reader: the new reader with a plain ir.save (given workers / budget) and the separate hash pass;
- new: huluexport.checkpoint.shards (one mapping per shard, one copy = the cast) and
  huluexport.export.hashing.save_hashed (hashed while written) with the given workers / in-flight budgets.

The checkpoint's byte ranges are read once before the runs, so every configuration reads from the page cache.
Each configuration runs in a fresh subprocess (its own peak RSS); the written files are deleted after each.

    python benchmarks/bench_save_phase.py /work/big/ckpt7b --layers 4 --work /work/big/fastsave/savebench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, shutil
from pathlib import Path
import onnx_ir as ir, numpy as np, torch
from hulurt import manifest as rt
from huluexport.checkpoint import weight_files
ckpt, names, out, mode = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
workers, inflight = int(sys.argv[5]), int(sys.argv[6])
_, files = weight_files(Path(ckpt))
if mode == "old":
    from safetensors import safe_open
    def source(n):
        with safe_open(str(files[n]), framework="pt") as f:
            return f.get_tensor(n).to(torch.float16).contiguous()
else:
    from huluexport.checkpoint.shards import ShardReader
    reader = ShardReader()
    def source(n):
        return reader.read(files[n], n, torch.float16)
graph_inputs, graph_outputs, nodes, inits = [], [], [], []
for i, n in enumerate(names):
    with __import__("safetensors").safe_open(str(files[n]), framework="pt") as f:
        shape = list(f.get_slice(n).get_shape())
    v = ir.Value(name=f"w{i}", shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT16))
    v.const_value = ir.LazyTensor(lambda n=n: ir.Tensor(source(n).numpy()), dtype=ir.DataType.FLOAT16,
                                  shape=ir.Shape(shape), name=f"w{i}")
    inits.append(v)
    node = ir.Node("", "Identity", [v], num_outputs=1)
    node.outputs[0].name = f"o{i}"
    nodes.append(node); graph_outputs.append(node.outputs[0])
model = ir.Model(ir.Graph([], graph_outputs, nodes=nodes, initializers=inits, opset_imports={"": 21}), ir_version=10)
out.mkdir(parents=True, exist_ok=True)
t0, c0 = time.perf_counter(), time.process_time()
if mode in ("old", "reader"):
    ir.save(model, out / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=1024, max_workers=workers,
            max_in_flight_bytes=inflight)
    t1 = time.perf_counter()
    hashes = {p.name: rt.sha256_file(p) for p in (out / "m.onnx", out / "m.onnx.data")}
else:
    from huluexport.export.hashing import save_hashed
    written = save_hashed(model, out / "m.onnx", "m.onnx.data", size_threshold_bytes=1024, max_workers=workers,
                          max_in_flight_bytes=inflight)
    t1 = time.perf_counter()
    hashes = {k: v.sha256 for k, v in written.items()}
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
size = (out / "m.onnx.data").stat().st_size
shutil.rmtree(out)
print(json.dumps({"wall": wall, "save": t1 - t0, "cpu": cpu, "bytes": size, "hash": hashes["m.onnx.data"],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--configs", default="old:1:268435456,new:1:268435456,new:2:536870912,new:2:1073741824")
    args = ap.parse_args()
    index = json.loads((args.checkpoint / "model.safetensors.index.json").read_text())
    names = ["model.embed_tokens.weight"] + [
        n for n in index["weight_map"] for i in range(args.layers) if n.startswith(f"model.layers.{i}.")
    ]
    t0 = time.perf_counter()  # warm the page cache with exactly the bytes the runs read
    from huluexport.checkpoint import weight_files
    from huluexport.checkpoint.shards import ShardReader

    _, files = weight_files(args.checkpoint)
    reader = ShardReader()
    nbytes = sum(reader.read(files[n], n).numel() * 2 for n in names)
    print(f"{len(names)} tensors, {nbytes / 1e9:.2f} GB bf16 read into the page cache in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"load before: {os.getloadavg()}")
    for cfg in args.configs.split(","):
        mode, workers, inflight = cfg.split(":")
        r = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.checkpoint), json.dumps(names), str(args.work / mode), mode,
             workers, inflight],
            check=True, capture_output=True, text=True,
        )
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{mode} workers={workers} in_flight={int(inflight) >> 20} MiB: save {res['save']:.1f} s, "
              f"save+hash {res['wall']:.1f} s wall, {res['cpu']:.1f} s CPU, "
              f"peak RSS {res['maxrss_kb'] / 1024:.0f} MiB, "
              f"{res['bytes'] / 1e9:.2f} GB, sha256 {res['hash'][:12]}, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
