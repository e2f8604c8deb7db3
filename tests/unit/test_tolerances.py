"""The one tolerance table (huluexport/tolerances.py): read-only, every entry bounded and explained, and
docs/tolerances.md shows exactly its entries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from huluexport import tolerances as T

DOC = Path(__file__).resolve().parents[2] / "docs" / "tolerances.md"


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        T.TOLERANCES[("x", "fp32", "y")] = T.Tolerance(max_abs=1.0, reason="r")  # type: ignore[index]
    with pytest.raises(AttributeError):
        T.TOLERANCES.update({})  # type: ignore[attr-defined]


def test_every_entry_has_a_bound_and_a_reason() -> None:
    assert len(T.TOLERANCES) >= 16
    for key, t in T.TOLERANCES.items():
        bounds = (t.max_abs, t.max_rel, t.min_cosine, t.min_top1)
        assert any(b is not None for b in bounds), key
        assert all(b is None or b > 0 for b in bounds), key
        assert t.min_cosine is None or t.min_cosine <= 1.0
        assert t.min_top1 is None or t.min_top1 <= 1.0
        assert len(t.reason) > 20, key


def test_docs_show_the_table() -> None:
    text = DOC.read_text()
    m = re.search(r"<!-- generated: .*? -->\n(.*?)<!-- end generated -->", text, re.S)
    assert m, f"{DOC}: generated block markers missing"
    assert m.group(1) == T.markdown(), f"{DOC} is stale: regenerate with `python -m huluexport.tolerances`"
