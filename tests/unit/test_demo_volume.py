"""The demo path on a real MR volume: runtime inputs (hulurt.inputs) vs the reference's own compaction; the demo
runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hulurt import inputs

from huluexport.reference.model import VisualInput
from huluexport.reference.weights import load_model

ROOT = Path(__file__).resolve().parents[2]


def _demo():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    return demo


def test_runtime_compaction_equals_reference_compaction(tiny_ckpts: dict[str, Path]) -> None:
    from hulurt.tokenizer import Tokenizer

    d = tiny_ckpts["hf-qwen2"]
    model = load_model(d, "float32")
    assert model.cfg.reduction.enabled
    tok = Tokenizer.from_file(d)
    volume = _demo()._default_volume()
    q = "Describe the findings."
    full = inputs.build_inputs([volume], q, tok, 290, inputs.InputOptions(compression=False))
    reduced = inputs.build_inputs([volume], q, tok, 290, inputs.InputOptions(compression=True))
    v = full.visuals[0]
    t, g, mg, p = v.patches.shape
    ours = model.prepare_inputs(
        full.input_ids[0].tolist(),
        [VisualInput(v.patches.reshape(t, g * mg, p), tuple(v.grid_thw[1:]), v.merge_size, v.modal)],
    )
    theirs = model.prepare_compacted(
        reduced.input_ids[0], [reduced.visuals[0].patches], [tuple(v.grid_thw[1:])], reduced.visual_rows
    )
    assert 0 < reduced.n_kept < full.n_kept  # the MR volume really is reduced
    assert ours.input_ids.tolist() == reduced.input_ids[0].tolist()
    assert torch.equal(ours.inputs_embeds, theirs.inputs_embeds)


def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo().main(["--out", str(tmp_path), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out and "answer ids" in out and "slices" in out
