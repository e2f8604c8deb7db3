"""The bench harness on a fake timed callable: statistics, memory sampling, roofline, JSON schema, reports."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from huluexport import bench as B

STAGE_MS = {"preprocess": 2, "vision": 6, "reduction": 1, "embed": 1, "prefill": 8}
DECODE_MS = 3


def _fake_runner(scale: float, steps: int = 4) -> B.RunRecord:
    """A request with known stage times (ms * scale): the statistics and ratios below are exact, not timed."""
    stages = {k: ms * scale / 1e3 for k, ms in STAGE_MS.items()}
    stages["ttft"] = sum(stages.values())
    stages["decode"] = steps * DECODE_MS * scale / 1e3
    stages["e2e"] = stages["ttft"] + stages["decode"]
    return B.RunRecord(
        stages=stages,
        decode_steps=steps,
        new_tokens=steps + 1,
        prompt_tokens=40,
        visual_tokens_before=64,
        visual_tokens_after=50,
        token_ids=(1, 2, 3, 4, 5),
    )


def _side(name: str, scale: float) -> B.SideResult:
    records, mem = B.measure(lambda: _fake_runner(scale), warmup=1, repeats=5)
    return B.SideResult(
        name=name,
        description=f"fake {name}",
        load_s=0.01,
        records=tuple(records),
        memory=mem,
        weights_read_per_token_bytes=10_000_000,
        kv_bytes_per_token=1024,
    )


@pytest.fixture(scope="module")
def report() -> dict:
    rt, ref = _side("runtime", 1.0), _side("reference", 3.0)
    return B.build_report(
        runtime=rt,
        reference=ref,
        bandwidth_bytes_s=10e9,
        bundle={"path": "/tmp/fake", "name": "fake", "precision": "fp32", "target": "cpu"},
        inputs={"preset": "image", "frames": 1, "resolution": 224},
        settings={"warmup": 1, "repeats": 5, "threads": None},
    )


def test_stat_percentiles() -> None:
    s = B.Stat.of([float(x) for x in range(1, 12)] + [float("nan")])
    assert (s.median, s.p10, s.p90, s.min, s.max, s.n) == (6.0, 2.0, 10.0, 1.0, 11.0, 11)
    assert B.Stat.of([]).n == 0 and math.isnan(B.Stat.of([]).median)


def test_stage_statistics_and_ratios(report: dict) -> None:
    rt = report["sides"]["runtime"]["stages"]
    ref = report["sides"]["reference"]["stages"]
    assert math.isclose(rt["vision"]["median"], 0.006) and math.isclose(ref["vision"]["median"], 0.018)
    assert math.isclose(rt["decode"]["median"], DECODE_MS / 1e3)  # per token
    assert math.isclose(rt["decode_tok_s"]["median"], 1e3 / DECODE_MS)
    assert math.isclose(rt["ttft"]["median"], sum(STAGE_MS.values()) / 1e3)
    assert rt["e2e"]["n"] == 5 and len(report["sides"]["runtime"]["runs"]) == 5
    r = report["ratios_reference_over_runtime"]
    for k in ("vision", "prefill", "decode", "decode_tok_s", "e2e"):
        assert math.isclose(r[k], 3.0), k


def test_roofline_numbers(report: dict) -> None:
    roof = report["sides"]["runtime"]["roofline"]
    mean_ctx = 40 + (4 + 1) / 2
    assert roof["bytes_per_token"] == int(10_000_000 + 1024 * mean_ctx)
    assert math.isclose(roof["bound_tok_s"], 10e9 / roof["bytes_per_token"])
    assert math.isclose(roof["measured_over_bound_pct"], 100 * roof["measured_tok_s"] / roof["bound_tok_s"])


def test_memory_sampler_sees_an_allocation() -> None:
    with B.MemorySampler(period=0.002) as mem:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        time.sleep(0.05)
        del a
    j = mem.to_json()
    assert j["rss_peak_sampled_bytes"] - j["rss_start_bytes"] > 48 * 2**20
    assert j["ru_maxrss_process_bytes"] >= j["rss_peak_sampled_bytes"] * 0.9
    assert j["gpu_used_peak_bytes"] is None or j["gpu_used_peak_bytes"] > 0


def test_json_schema_accepts_the_report_and_names_broken_fields(report: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    B.write_outputs(report, json_path=out)
    doc = json.loads(out.read_text())
    B.check_report(doc)
    bad = json.loads(out.read_text())
    del bad["sides"]["runtime"]["stages"]["prefill"]["p90"]
    with pytest.raises(ValueError, match=r"sides.runtime.stages.prefill: missing key 'p90'"):
        B.check_report(bad)
    bad = json.loads(out.read_text())
    bad["schema"] = "huluexport.bench/0"
    with pytest.raises(ValueError, match="report.schema"):
        B.check_report(bad)
    bad = json.loads(out.read_text())
    bad["sides"]["runtime"]["tokens"]["prompt"] = "40"
    with pytest.raises(ValueError, match="tokens.prompt"):
        B.check_report(bad)
    bad = json.loads(out.read_text())
    bad["sides"]["runtime"]["runs"].pop()
    with pytest.raises(ValueError, match="runs"):
        B.check_report(bad)


def test_markdown_and_png(report: dict, tmp_path: Path) -> None:
    from PIL import Image

    md, png = tmp_path / "r.md", tmp_path / "r.png"
    B.write_outputs(report, markdown_path=md, plot_path=png)
    text = md.read_text()
    assert "| vision |" in text and "reference / runtime" in text and "measured / bound" in text
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == B.PLOT_SIZE_PX
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    assert arr.std() > 10  # not a blank canvas
    # without a reference the right panel shows the roofline instead
    solo = dict(report, sides={"runtime": report["sides"]["runtime"]}, ratios_reference_over_runtime={})
    B.check_report(solo)
    B.write_outputs(solo, plot_path=tmp_path / "solo.png", markdown_path=tmp_path / "solo.md")
    with Image.open(tmp_path / "solo.png") as im:
        assert im.size == B.PLOT_SIZE_PX


def test_rich_table_renders(report: dict) -> None:
    from rich.console import Console

    con = Console(width=160, record=True)
    con.print(B.render_report(report))
    out = con.export_text()
    assert "decode_tok_s" in out and "reference / runtime" in out and "memory bandwidth" in out


@pytest.mark.parametrize("preset", B.PRESETS)
def test_synthetic_presets(preset: str, tmp_path: Path) -> None:
    frames = B.synthetic_frames(preset, frames=4, resolution=64)
    if preset == "text":
        assert frames is None and B.write_synthetic_files(preset, frames, tmp_path) == []
        return
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    assert frames.shape[0] == (1 if preset == "image" else 4) and frames.std() > 5
    if frames.shape[0] > 1:
        diff = np.abs(frames[1].astype(int) - frames[0].astype(int)).mean(axis=-1)
        assert (diff > 40).mean() > 0.01 and (diff < 20).mean() > 0.5  # some regions move, most do not
    files = B.write_synthetic_files(preset, frames, tmp_path)
    assert len(files) == 1 and files[0].stat().st_size > 100


def test_a_side_is_described_as_it_ran() -> None:
    """A side whose runs change what it is (the runtime dropping a CUDA graph whose capture failed) is reported
    by its description after the runs, not the one it had when loaded."""
    from huluexport.bench.measure import PreparedSide, RunRecord, measure_sides

    state = {"graph": True}

    def once() -> RunRecord:
        state["graph"] = False  # the first run's capture failed
        return RunRecord({"ttft": 0.01, "decode": 0.02, "e2e": 0.03}, 2, 3, 5)

    side = PreparedSide("runtime", "runtime, CUDA graph", 0.0, once, 0, 0, 0, 0,
                        describe=lambda: "runtime" + (", CUDA graph" if state["graph"] else ""))
    fixed = PreparedSide("reference", "reference", 0.0, once, 0, 0, 0, 0)
    out = measure_sides([side, fixed], warmup=0, repeats=1)
    assert out["runtime"].description == "runtime" and out["reference"].description == "reference"
