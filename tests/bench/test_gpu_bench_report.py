"""scripts/gpu_bench.py's report on real `huluexport bench` output: a 2- and a 4-layer tiny slice benched on the
CPU with the CPU rehearsal's own bench arguments (gpu_bench.bench_command), then gpu_bench_report.report; every
figure of the 28-layer extrapolation it shows is recomputed here from the bench JSON (docs/gpu.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from e2e.bundles import deep_checkpoint, sliced_bundle

from huluexport.bench import check_report
from huluexport.cli import main

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import gpu_bench

        yield gpu_bench
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def result(gpu_bench, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The result dict of `measure --rehearse-cpu --only text_b2 text_b4`, its benches run in this process."""
    tmp = tmp_path_factory.mktemp("gpu_bench")
    benches = {}
    for name, layers in (("text_b2", 2), ("text_b4", 4)):
        js = tmp / f"{name}.json"
        cmd, _ = gpu_bench.bench_command(name, sliced_bundle("qwen2", layers), js, rehearse=True)
        main([*cmd, "--checkpoint", str(deep_checkpoint("qwen2"))])  # the slices' reference weights
        doc = json.loads(js.read_text())
        check_report(doc)
        assert doc["bundle"]["dims"]["layers"] == layers and "float16" in doc["sides"]["reference"]["description"]
        benches[name] = {"rc": 0, "report": doc}
    res = {"mode": "cpu-rehearsal", "rehearsal_caps": gpu_bench.REHEARSAL_CAPS,
           "environment": gpu_bench.environment(), "copy": gpu_bench.copy_bandwidth(1 / 16, 3, "cpu"),
           "benches": benches}
    gpu_bench.report(res, tmp)
    res["out"] = tmp
    return res


def test_rehearsal_bench_arguments(gpu_bench, tmp_path: Path) -> None:
    """The rehearsal keeps BENCHES' options, caps the sizes, forces the form CUDA would pick, runs on the CPU."""
    cmd, timeout = gpu_bench.bench_command("ct160_b4", tmp_path / "b4", tmp_path / "r.json", rehearse=True)
    assert cmd[cmd.index("--frames") + 1] == "4" and cmd[cmd.index("--resolution") + 1] == "112"
    assert cmd[cmd.index("--decoder-form") + 1] == "gqa-static" and cmd[cmd.index("--provider") + 1] == "cpu"
    assert cmd[cmd.index("--reference-device") + 1] == "cpu" and timeout == gpu_bench.REHEARSAL_TIMEOUT_S
    gpu, _ = gpu_bench.bench_command("ct160_b4", tmp_path / "b4", tmp_path / "r.json", rehearse=False)
    assert gpu[gpu.index("--frames") + 1] == "160" and "--decoder-form" not in gpu
    assert gpu[gpu.index("--provider") + 1] == "cuda" and gpu[gpu.index("--reference-device") + 1] == "cuda"
    v1, _ = gpu_bench.bench_command("text_b4_v1", tmp_path / "b4", tmp_path / "r.json", rehearse=True)
    assert v1.count("--decoder-form") == 1 and v1[v1.index("--decoder-form") + 1] == "v1-concat"


def test_extrapolation_shows_the_bench_numbers(result: dict) -> None:
    md = (result["out"] / "gpu_bench.md").read_text()
    assert md.startswith("# CPU REHEARSAL") and "no GPU figure" in md.splitlines()[0]
    r2, r4 = result["benches"]["text_b2"]["report"], result["benches"]["text_b4"]["report"]
    bw = result["copy"]["bandwidth_bytes_s"]
    assert result["copy"]["device"] == "cpu" and "HOST memory" in result["copy"]["method"] and bw > 0
    saved = json.loads((result["out"] / "gpu_bench.json").read_text())["extrapolation"]
    assert set(saved) == {"runtime", "reference"}
    for side in ("runtime", "reference"):
        e = saved[side]
        t2 = 1 / r2["sides"][side]["roofline"]["measured_tok_s"]
        t4 = 1 / r4["sides"][side]["roofline"]["measured_tok_s"]
        per_layer = (t4 - t2) / 2
        t28 = t2 + 26 * per_layer
        assert e["t2_ms"] == pytest.approx(t2 * 1e3, rel=1e-12) and e["t4_ms"] == pytest.approx(t4 * 1e3, rel=1e-12)
        assert e["per_layer_ms"] == pytest.approx(per_layer * 1e3, rel=1e-12)
        assert e["t28_ms"] == pytest.approx(t28 * 1e3, rel=1e-12)
        assert e["valid"] == (t4 > t2)
        shown = f"**{side}**: t(2) = {t2 * 1e3:.3f} ms, t(4) = {t4 * 1e3:.3f} ms per token; per layer " \
                f"(t(4) - t(2)) / 2 = {per_layer * 1e3:.4f} ms; "
        assert shown in md
        # bytes: the decoder graph the side's runs read (gqa-static forced on the runtime side, as on CUDA)
        piece = "decoder_gqa" if side == "runtime" else "decoder"
        assert e["piece"] == piece and "decoder_gqa" in r4["sides"]["runtime"]["description"]
        w2, w4 = r2["bundle"]["piece_weight_bytes"][piece], r4["bundle"]["piece_weight_bytes"][piece]
        layer = (w4 - w2) / 2
        emb_row = r4["bundle"]["piece_weight_bytes"]["embed"] / r4["bundle"]["dims"]["vocab"]
        kv = r4["sides"][side]["roofline"]["kv_bytes_per_token_at_mean_context"] / 4 * 28
        total = w2 + 26 * layer + emb_row + kv
        assert (e["weights_2"], e["weights_4"], e["layer_bytes"]) == (w2, w4, layer)
        assert e["bytes_per_token_28"] == pytest.approx(total, rel=1e-12)
        assert (f"W(2) = {w2 / 1e9:.4f} GB, W(4) = {w4 / 1e9:.4f} GB, per layer (W(4) - W(2)) / 2 = "
                f"{layer / 1e6:.2f} MB; W(28) = W(2) + 26 x layer + embedding row {emb_row:.0f} B; KV read at the "
                f"mean context {kv / 1e6:.3f} MB; total {total / 1e9:.4f} GB.") in md
        bound_ms = total / bw * 1e3
        if e["valid"]:
            assert (f"t(28) = t(2) + 26 x {per_layer * 1e3:.4f} = {t28 * 1e3:.3f} ms -> {1 / t28:.1f} tok/s.") in md
            assert (f"Bound = {total / 1e9:.4f} GB / {bw / 1e12:.3f} TB/s = {bound_ms:.3f} ms; fraction of the "
                    f"bandwidth bound reached = {bound_ms:.3f} / {t28 * 1e3:.3f} = "
                    f"**{100 * bound_ms / (t28 * 1e3):.1f} %** (host figures") in md
        else:
            assert e["tok_s_28"] is None and e["fraction_of_bound"] is None
            assert shown + "t(4) <= t(2): the per-layer time is below the noise" in md


def test_layer_bytes_match_the_planner(result: dict) -> None:
    """W(4) - W(2) read from the graphs = two decoder layers by huluexport.plan's parameter count of the config."""
    import dataclasses

    from hulurt.manifest import load_manifest

    from huluexport.export.pipeline import config_from_dict
    from huluexport.plan import weight_bytes

    r2, r4 = result["benches"]["text_b2"]["report"], result["benches"]["text_b4"]["report"]
    cfg = config_from_dict(load_manifest(Path(r4["bundle"]["path"]), verify_hashes=False).model)
    two = [weight_bytes(cfg.replace(decoder=dataclasses.replace(cfg.decoder, layers=n)), "fp32").decoder
           for n in (2, 4)]
    for piece in ("decoder", "decoder_gqa"):
        graph = r4["bundle"]["piece_weight_bytes"][piece] - r2["bundle"]["piece_weight_bytes"][piece]
        assert graph == two[1] - two[0]


def test_report_plot(result: dict) -> None:
    from PIL import Image

    with Image.open(result["out"] / "gpu_bench.png") as im:
        assert im.format == "PNG"
        assert np.asarray(im.convert("L"), dtype=np.float32).std() > 10


def test_build_state_follows_the_latest_build(gpu_bench, tmp_path: Path) -> None:
    """`measure` starts a step once the latest build has built what it needs, or stops waiting when that build
    is done or its process is gone (a killed build never writes BUILD DONE)."""
    import subprocess

    assert gpu_bench.build_state(tmp_path) == ("none", set())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    log = tmp_path / "build.log"
    try:
        log.write_text("BUILD START pid=1\nBUILT b4 rc=0 in 9 s\nBUILT b2 rc=0 in 5 s\nBUILD DONE status=0\n"
                       f"BUILD START pid={child.pid}\nBUILT b4 rc=0 in 132 s\n")
        assert gpu_bench.build_state(tmp_path) == ("running", {"b4"})
        t0 = time.monotonic()
        gpu_bench._wait_for(tmp_path, ("b4",), time.time() + 30)  # built: no wait
        gpu_bench._wait_for(tmp_path, ("b2",), time.time() + 1)  # not built: waits until the deadline
        assert time.monotonic() - t0 >= 1
    finally:
        child.kill()
        child.wait()
    assert gpu_bench.build_state(tmp_path) == ("ended", {"b4"})
    with open(log, "a") as f:
        f.write("BUILT b2 rc=1 in 3 s\nBUILD DONE status=1\n")
    assert gpu_bench.build_state(tmp_path) == ("done", {"b4", "b2"})


def test_quantized_bundle_step(gpu_bench, tmp_path: Path) -> None:
    """The build's QUANTIZED step, for real on a tiny bundle with both decoder forms standing in for b4:
    `huluexport quantize` with the step's options (int4, the gqa-static form only), the BUILT line `measure`
    waits for, and no second run when the bundle is there."""
    import shutil

    from e2e.bundles import bundle
    from hulurt.manifest import load_manifest

    (name, (src, extra)), = gpu_bench.QUANTIZED.items()
    bdir = tmp_path / "bundles"
    shutil.copytree(bundle("qwen2", gqa=True), bdir / src)
    log = tmp_path / "build.log"
    assert gpu_bench._bundle_step(bdir, log, name, ["quantize", str(bdir / src), *extra], 300) == 0, log.read_text()
    assert name in gpu_bench.build_state(tmp_path)[1]
    m = load_manifest(bdir / name, verify_hashes=True)
    assert (m.pieces["decoder"].precision, m.pieces["decoder_gqa"].precision) == ("fp32", "int4")
    assert gpu_bench.BENCHES["text_b4_int4"][0] == name
    assert gpu_bench._bundle_step(bdir, log, name, ["quantize", "never-run"], 300) == 0
    assert log.read_text().rstrip().endswith(f"BUILT {name} rc=0 (there already)")


def test_report_shows_the_greedy_check(result: dict) -> None:
    """Each compared bench carries the greedy check (runtime gqa-static vs the fp16 reference, logits kept),
    and the report lists its summary and puts the first divergence, if any, in the runs table."""
    md = (result["out"] / "gpu_bench.md").read_text()
    assert "## Greedy agreement with the reference" in md
    assert "## Against the targets" in md and "the GPU targets do not apply" in md  # a CPU rehearsal
    for name in ("text_b2", "text_b4"):
        gc = result["benches"][name]["report"]["greedy_check"]
        assert gc["steps"] >= 1 and len(gc["max_abs_logit_diff"]) == gc["same_prefix_steps"]
        assert f"- {name}: {gc['summary']}." in md
        if gc["first_divergence"] is not None:
            assert f"first divergence at step {gc['first_divergence']} of {gc['steps']}" in md


def test_targets_on_a_gpu_result(gpu_bench) -> None:
    """The targets section on made-up GPU extrapolation figures (only the arithmetic of the verdicts)."""
    from gpu_bench_report import _targets

    ext = {"runtime": {"valid": True, "fraction_of_bound": 0.87, "tok_s_28": 230.0},
           "reference": {"valid": True, "fraction_of_bound": 0.6, "tok_s_28": 160.0}}
    near = {"first_divergence": 9, "steps": 32, "divergence": {"near_tie": True}}
    far = {"first_divergence": 3, "steps": 32, "divergence": {"near_tie": False}}
    same = {"first_divergence": None, "steps": 32}
    B = {"a": {"greedy_check": same}, "b": {"greedy_check": near}, "c": {"greedy_check": far}, "d": {}}
    text = "\n".join(_targets(B, ext, rehearsal=False))
    assert "bandwidth bound, 28 layers extrapolated: **met** (87.0 %)" in text
    assert "same GPU, 28 layers extrapolated: **met** (1.44x)" in text
    assert "- a: greedy tokens identical for 16 steps or the first divergence explained: **met** (identical" in text
    assert "- b: " in text and "**met** (first divergence at step 9, a near tie)" in text
    assert "**NOT met** (first divergence at step 3, NOT a near tie)" in text and "- d:" not in text
    ext["runtime"]["fraction_of_bound"] = 0.8
    assert "**NOT met** (80.0 %)" in "\n".join(_targets(B, ext, rehearsal=False))
    ext["runtime"]["valid"] = False
    assert "extrapolated: not measured." in "\n".join(_targets(B, ext, rehearsal=False))


def test_sampling_step_and_its_report_section(gpu_bench, tmp_path: Path) -> None:
    """The `sampling` step runs benchmarks/bench_device_sampling.py (CPU provider here, two rows a setting) and
    the report shows its rows as measured."""
    import gpu_bench_report

    entry = gpu_bench._sampling(tmp_path, "cpu", 600, ["--calls", "2", "--repeats", "1"])
    assert entry["rc"] == 0, (tmp_path / "sampling.log").read_text()[-2000:]
    rep = entry["report"]
    assert rep["meta"]["provider"] == "cpu" and (tmp_path / "device_sampling_cpu.md").is_file()
    lines = gpu_bench_report._sampling(entry)
    assert lines[1] == "## A sampled token: sampling graph on `cpu` vs the row to the host sampler"
    assert len(rep["results"]) == 8 and len(lines) == 5 + len(rep["results"])
    for r in rep["results"]:
        s = r["sides"]
        assert s["host"]["median_ms"] > 0 and s["device"]["median_ms"] > 0
        assert (f"| {r['rows']} | {r['config']} | {r['host_fallback_rows']}/2 | {s['host']['median_ms']:.3f} | "
                f"{s['device']['median_ms']:.3f} | {r['speedup']:.2f}x |") in lines
    assert gpu_bench_report._sampling({"rc": 1})[1].startswith("Sampling on the device vs the host: not measured")


def test_smoke_verdict_goes_into_the_result_and_report(gpu_bench, tmp_path: Path) -> None:
    """gpu_bench.sh writes scripts/gpu_smoke.py's output to $OUT/gpu_smoke.log; `measure` keeps its verdict line
    in the result and the report's header shows it (here a measure of no step, and a made-up verdict)."""
    line = "GPU SMOKE DIFFERS (runs, but): chunk y: relative error 3.00e-02 > 1e-2 against the CPU provider"
    (tmp_path / "gpu_smoke.log").write_text(f"onnxruntime 1.31.1\n{line}\n")
    assert gpu_bench.measure(tmp_path / "w", tmp_path, ["none"], 60, rehearse=True) == 0
    assert json.loads((tmp_path / "gpu_bench.json").read_text())["smoke"] == line
    assert f"Operator check before measuring (scripts/gpu_smoke.py): {line}" in (tmp_path / "gpu_bench.md").read_text()
