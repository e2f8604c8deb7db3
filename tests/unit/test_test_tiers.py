"""The test tiers keep their promises: the runtime tier (tests/runtime) imports only hulurt, never huluexport or
torch (what it needs built by the exporter comes through fixtures of tests/conftest.py or tests/e2e/bundles.py)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_RUNTIME_TIER = ("huluexport", "torch", "transformers", "onnx", "onnxscript")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_runtime_tier_imports_no_exporter() -> None:
    files = sorted((TESTS / "runtime").rglob("*.py"))
    assert len(files) > 10
    bad = [
        f"{f.relative_to(TESTS)}:{line}: import {name}"
        for f in files
        for line, name in _imports(f)
        if name.split(".")[0] in FORBIDDEN_IN_RUNTIME_TIER
    ]
    assert bad == []
