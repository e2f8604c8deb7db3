"""A bundle's graphs carry no path of the machine that built them (passes/strip_build_paths.py): torch.onnx
records the Python stack of every traced op, with absolute source paths, and a bundle is shipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import onnx
from e2e.bundles import bundle

ROOT = Path(__file__).resolve().parents[2]


def test_graphs_hold_no_source_paths_or_stack_traces() -> None:
    root = bundle("qwen2")
    graphs = sorted(root.glob("*.onnx"))
    assert {g.name for g in graphs} >= {"vision.onnx", "embed.onnx", "decoder.onnx"}
    for g in graphs:
        raw = g.read_bytes()
        assert str(ROOT).encode() not in raw, f"{g.name} holds the build checkout's path {ROOT}"
        assert b".py\", line" not in raw, f"{g.name} holds a Python stack trace"
        nodes = onnx.load(str(g), load_external_data=False).graph.node
        assert len(nodes) > 10
        keys = {p.key for n in nodes for p in n.metadata_props}
        assert "pkg.torch.onnx.stack_trace" not in keys
        # the module scopes stay (replicate_layers reads them; they name modules, not files)
        assert any(k.startswith("pkg.torch.onnx.name_scopes") for k in keys) or g.name == "embed.onnx"
