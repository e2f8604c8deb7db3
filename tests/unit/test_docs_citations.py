"""Comments and docs cite only files of the repository: no design notes from outside it, and every
`docs/model.md §N.M` names a section that docs/model.md has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {".py", ".md", ".cu", ".cuh", ".cpp", ".h", ".txt", ".toml", ".cfg", ".sh"}
SKIP = {".git", ".venv", "artifacts", "build", "__pycache__"}
# the design notes' names, spelled in pieces so that this file does not match itself
OUTSIDE = re.compile("|".join(["ARCHITECT" + "URE", r"\bARC" + r"H\b", r"\.\./sha" + "red", "STY" + r"LE\.md"]))


def _sources() -> list[Path]:
    out = []
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT).parts
        if any(part in SKIP or part.startswith(".venv") for part in rel[:-1]) or not p.is_file():
            continue
        if p.suffix in SUFFIXES or p.name in ("Makefile", "run"):
            out.append(p)
    return out


def _sections() -> set[str]:
    text = (ROOT / "docs" / "model.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", text, re.M))


def test_no_citation_of_files_outside_the_repository() -> None:
    bad = []
    for p in _sources():
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert bad == []


def test_model_md_citations_name_existing_sections() -> None:
    sections = _sections()
    assert {"1.4", "3.3", "6.2", "12"} <= sections
    cited = 0
    bad = []
    for p in _sources():
        for m in re.finditer(r"docs/model\.md §(\d+(?:\.\d+)?)((?:(?:, | / | and |-)§?\d+(?:\.\d+)?)*)",
                             p.read_text(errors="replace")):
            for sec in [m.group(1), *re.findall(r"\d+(?:\.\d+)?", m.group(2))]:
                cited += 1
                if sec not in sections:
                    bad.append(f"{p.relative_to(ROOT)}: §{sec}")
    assert cited > 50 and bad == []
