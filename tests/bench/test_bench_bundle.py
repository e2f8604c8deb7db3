"""`huluexport bench` on real bundles: tiny (default tier) and the 7B-width 2-layer slice (slow tier)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from huluexport import bench as B
from huluexport.cli import main
from huluexport.tolerances import get as tolerance


def _build(out: Path, size: str, layers: int | None = None) -> Path:
    from huluexport.export.pipeline import BuildOptions, build

    return build(BuildOptions(out=out, size=size, random_weights=True, layers=layers, precision="fp32"))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("bench") / "tiny", "tiny")


def _run_cli(bundle: Path, out: Path, *extra: str) -> dict:
    main(
        [
            "bench",
            str(bundle),
            "--json",
            str(out / "r.json"),
            "--markdown",
            str(out / "r.md"),
            "--plot",
            str(out / "r.png"),
            *extra,
        ]
    )
    doc = json.loads((out / "r.json").read_text())
    B.check_report(doc)
    return doc


def _check_files(out: Path) -> None:
    from PIL import Image

    md = (out / "r.md").read_text()
    assert "## Stages" in md and "| decode (per token) |" in md and "## Planner vs bundle" in md
    with Image.open(out / "r.png") as im:
        assert im.format == "PNG" and im.size == B.PLOT_SIZE_PX
        assert np.asarray(im.convert("L"), dtype=np.float32).std() > 10


def test_bench_tiny_volume_with_reference(tiny_bundle: Path, tmp_path: Path) -> None:
    doc = _run_cli(
        tiny_bundle,
        tmp_path,
        "--preset",
        "volume",
        "--frames",
        "4",
        "--resolution",
        "112",
        "--max-new-tokens",
        "8",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--compare-reference",
    )
    _check_files(tmp_path)
    rt, ref = doc["sides"]["runtime"], doc["sides"]["reference"]
    # same request on both sides: token counts, reduction and greedy tokens agree
    assert rt["tokens"] == ref["tokens"]
    assert rt["tokens"]["visual_before_reduction"] == 4 * 16  # 112x112, m=2 -> 4x4 merged tokens per slice
    assert (
        16 <= rt["tokens"]["visual_after_reduction"] < 64
    )  # the moving disc keeps some tokens, drops others
    assert doc["same_tokens"] is True and rt["tokens"]["new"] == 8 and rt["tokens"]["decode_steps"] == 7
    # the greedy check: one more run per side with the logits rows kept, compared step by step
    gc = doc["greedy_check"]
    assert gc["steps"] == gc["same_prefix_steps"] == 8 and gc["first_divergence"] is None
    assert 0 < max(gc["max_abs_logit_diff"]) <= tolerance("decoder", "fp32", "ort").max_abs  # fp32 both sides
    assert min(gc["reference_top2_margin"]) > 0 and "identical for all 8 steps" in gc["summary"]
    assert "Greedy check" in (tmp_path / "r.md").read_text()
    for side in (rt, ref):
        for st in ("vision", "prefill", "decode", "e2e"):
            assert side["stages"][st]["median"] > 0 and side["stages"][st]["n"] == 3
        assert side["stages"]["e2e"]["median"] >= side["stages"]["ttft"]["median"]
    assert all(
        np.isfinite(v) and v > 0 for k, v in doc["ratios_reference_over_runtime"].items() if k != "preprocess"
    )
    # the planner's weight bytes equal the bundle's initializers, up to a few small graph constants that the
    # exporter stores as initializers (measured: +108 bytes in the vision graph)
    rows = doc["plan_check"]["rows"]
    for k in (
        "vision piece initializers (vision + projector)",
        "embed + decoder initializers (decoder)",
        "decoder weights read per decoded token",
    ):
        assert 0 <= rows[k]["measured"] - rows[k]["planned"] <= 4096, (k, rows[k])
    assert (
        rt["roofline"]["weights_bytes_per_token"]
        == rows["decoder weights read per decoded token"]["measured"]
    )


def test_bench_tiny_text_image_and_files(tiny_bundle: Path, tmp_path: Path) -> None:
    doc = _run_cli(
        tiny_bundle,
        tmp_path,
        "--preset",
        "text",
        "--max-new-tokens",
        "4",
        "--repeats",
        "2",
        "--target",
        "h200",
    )
    assert "reference" not in doc["sides"]
    # the roofline of a named device uses its datasheet bandwidth (NVIDIA H200 SXM: 4.8 TB/s)
    assert (
        doc["settings"]["target"] == "h200"
        and doc["sides"]["runtime"]["roofline"]["bandwidth_bytes_s"] == 4.8e12
    )
    rt = doc["sides"]["runtime"]
    assert rt["tokens"]["visual_before_reduction"] == 0 and rt["stages"]["vision"]["median"] == 0
    _check_files(tmp_path)
    doc = _run_cli(
        tiny_bundle,
        tmp_path,
        "--preset",
        "image",
        "--resolution",
        "224",
        "--max-new-tokens",
        "4",
        "--repeats",
        "2",
    )
    assert doc["sides"]["runtime"]["tokens"]["visual_before_reduction"] == 256  # 224x224, m=1 -> 16x16
    # a NIfTI file read by hulurt's reader inside the timed preprocess stage
    vol = B.write_synthetic_files("volume", B.synthetic_frames("volume", 4, 112), tmp_path / "media")[0]
    doc = _run_cli(tiny_bundle, tmp_path, "--media", str(vol), "--max-new-tokens", "3", "--repeats", "1")
    tok = doc["sides"]["runtime"]["tokens"]
    assert doc["inputs"]["preset"] == "files" and tok["visual_before_reduction"] == 64
    assert 16 <= tok["visual_after_reduction"] < 64


SLICED = os.environ.get("HULU_BENCH_SLICED_BUNDLE")
needs_sliced = pytest.mark.skipif(
    not SLICED,
    reason="set HULU_BENCH_SLICED_BUNDLE to a `huluexport build --size 7b "
    "--random-weights --layers 2` bundle (6.2 GB fp32, ~10 min to build here): NOT run",
)


@pytest.fixture(scope="module")
def sliced_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """7B widths (hidden 3584, vocab 152064), 2 decoder + 2 vision layers: ~1.6 B parameters, 6.2 GB fp32.
    Needs ~13 GB of RAM (runtime and reference side by side). Result committed in benchmarks/results/."""
    out = tmp_path_factory.mktemp("sliced_out")
    doc = _run_cli(
        Path(str(SLICED)),
        out,
        "--preset",
        "image",
        "--resolution",
        "224",
        "--max-new-tokens",
        "8",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--compare-reference",
    )
    _check_files(out)
    return doc


@pytest.mark.slow
@needs_sliced
def test_bench_sliced_7b_same_tokens_and_planned_bytes(sliced_report: dict) -> None:
    """The slice benchmark's correctness, apart from its speed claim below (so no xfail swallows it)."""
    assert sliced_report["same_tokens"] is True
    for name, row in sliced_report["plan_check"]["rows"].items():
        if "initializers" in name or "per decoded token" in name:
            assert abs(row["ratio"] - 1.0) < 1e-4, (name, row)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not reliably true at fp32 on this 2-core CPU: three interleaved runs gave 0.88x, 1.36x and 1.05x "
    "(reference / runtime per decoded token). Decode is a memory-bound GEMV over 3.8 GB per token and "
    "onnxruntime's MLAS GEMV streams ~8-11 GB/s here vs torch/MKL's ~15 GB/s in a micro-benchmark; prefill "
    "is 3-4x faster. See benchmarks/results/bench_summary.md",
    strict=False,
)
@needs_sliced
def test_bench_sliced_7b_runtime_faster_per_decoded_token(sliced_report: dict) -> None:
    assert sliced_report["ratios_reference_over_runtime"]["decode"] > 1.0  # runtime faster per decoded token
