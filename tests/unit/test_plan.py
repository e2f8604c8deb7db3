"""`huluexport plan`: weight bytes from real parameter counts, KV per token, resize rule, verdicts, CLI."""

from __future__ import annotations

import json
import math

import pytest

from huluexport import plan as P
from huluexport.cli import main
from huluexport.config import SIZES
from huluexport.errors import ConfigError

REAL_SIZES = ("4b", "7b", "14b", "32b")


def _side_params(wb: P.WeightBytes) -> int:
    return wb.params["vision"] + wb.params["projector"] + wb.params["decoder_other"]


@pytest.mark.parametrize("size", [*REAL_SIZES, "tiny", "tiny-qwen3"])
def test_parameter_groups_add_up_to_the_config_count(size: str) -> None:
    cfg = SIZES[size]
    wb = P.weight_bytes(cfg, "fp16")
    assert sum(wb.params.values()) == cfg.num_parameters()
    assert wb.params["decoder_other"] > 0  # norms (+ biases) exist in every size


def test_7b_weight_bytes_at_each_precision() -> None:
    n = 8_044_744_944  # ARCHITECTURE.md 1.1 / 1.4, exact
    cfg = SIZES["7b"]
    assert cfg.num_parameters() == n
    assert P.weight_bytes(cfg, "fp16").total == 16_089_489_888 == 2 * n  # the 7B index's metadata.total_size
    assert P.weight_bytes(cfg, "bf16").total == 2 * n
    assert P.weight_bytes(cfg, "fp32").total == 4 * n
    d = cfg.decoder
    # decoder 2-D matrices by hand: embed + lm_head + per layer q, k, v, o, gate, up, down
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    mats = 2 * d.vocab * d.hidden + d.layers * (
        2 * q * d.hidden + 2 * kv * d.hidden + 3 * d.hidden * d.intermediate
    )
    rows = 2 * d.vocab + d.layers * (q + 2 * kv + d.hidden + 2 * d.intermediate + d.hidden)
    side = n - mats  # vision + projector + norms + biases stay fp16 when the decoder is quantized
    assert P.weight_bytes(cfg, "int8").total == mats + 2 * rows + 2 * side
    # every 7B matrix has an input dim divisible by 128 (3584, 18944): one fp16 scale per 128 weights
    assert d.hidden % 128 == 0 and d.intermediate % 128 == 0
    assert P.weight_bytes(cfg, "int4").total == mats // 2 + 2 * mats // 128 + 2 * side
    assert P.weight_bytes(cfg, "fp8").total == mats + 4 * (2 + 7 * d.layers) + 2 * side


@pytest.mark.parametrize("size", REAL_SIZES)
@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_weight_bytes_scale_with_precision(size: str, precision: str) -> None:
    cfg = SIZES[size]
    wb = P.weight_bytes(cfg, precision)
    n = cfg.num_parameters()
    if precision in ("fp32", "fp16", "bf16"):
        assert wb.total == P.WEIGHT_BYTES[precision] * n
    else:
        side = _side_params(wb)
        mats = wb.params["decoder_matrices"]
        low = P.WEIGHT_BYTES[precision] * mats + 2 * side
        assert low < wb.total < low * 1.035  # scales: int8 <0.1 %, int4 1/64 of the matrices (3.1 %)
    # decode reads the decoder minus the embedding table (one row of it per token)
    assert wb.read_per_decoded_token < wb.decoder


@pytest.mark.parametrize("size,kib", [("4b", 144), ("7b", 56), ("14b", 160), ("32b", 256)])
def test_kv_bytes_per_token_match_architecture_8_3(size: str, kib: int) -> None:
    assert SIZES[size].decoder.kv_bytes_per_token() == kib * 1024
    p = P.plan(size, "h200", "fp16", search_volume=False)
    assert p.kv_bytes_per_token == kib * 1024
    assert p.memory["kv_cache"] == kib * 1024 * p.context_tokens


# ARCHITECTURE.md 3.3 worked examples: (H, W, m, N) -> (h, w, tokens per frame)
RESIZE_TABLE = [
    (512, 512, 1, 1, 518, 518, 1369),
    (224, 224, 1, 1, 224, 224, 256),
    (640, 480, 1, 1, 644, 476, 1564),
    (2048, 2048, 1, 1, 1792, 1792, 16384),
    (100, 100, 1, 1, 98, 98, 49),
    (512, 512, 2, 160, 280, 280, 100),
    (512, 512, 2, 180, 252, 252, 81),
    (512, 512, 2, 32, 504, 504, 324),
    (360, 640, 2, 60, 336, 616, 264),
    (720, 1280, 2, 128, 224, 420, 120),
]


@pytest.mark.parametrize("H,W,m,N,h,w,tok", RESIZE_TABLE)
def test_resize_rule_worked_examples(H: int, W: int, m: int, N: int, h: int, w: int, tok: int) -> None:
    assert P.resized_hw(H, W, 14 * m, N) == (h, w)
    kind = "image" if m == 1 else "volume"
    vl = P.visual_load(SIZES["7b"], P.InputSpec(kind=kind, frames=N, height=H, width=W))
    assert vl.tokens_per_frame == tok and vl.tokens == tok * N


def test_resize_matches_the_runtime_preprocess() -> None:
    """The planner's local copy of the resize rule agrees with hulurt.preprocess (the runtime's)."""
    pre = pytest.importorskip("hulurt.preprocess")
    cases = [(h, w, 14 * m, n) for h, w, m, n, *_ in RESIZE_TABLE]
    cases += [(333, 517, 28, 7), (97, 1001, 14, 1), (512, 512, 28, 1500), (40, 40, 28, 3)]
    for h, w, f, n in cases:
        assert P.resized_hw(h, w, f, n) == tuple(pre.target_size(h, w, f, n)), (h, w, f, n)


def test_orin_nano_7b_fp16_does_not_fit_int4_fits() -> None:
    fp16 = P.plan("7b", "orin-nano", "fp16")
    int4 = P.plan("7b", "orin-nano", "int4")
    assert not fp16.fits and fp16.margin_bytes < -8 * P.GiB  # 16.1 GB of weights vs ~6.9 GB usable
    assert int4.fits and int4.margin_bytes > 0.5 * P.GiB
    assert int4.memory["weights"] < 5 * P.GiB
    assert int4.decode_tok_s_bound_first > 3 * fp16.decode_tok_s_bound_first
    # one 512x512 image still fits at int4
    img = P.plan("7b", "orin-nano", "int4", P.image_input("512x512"))
    assert img.visual_tokens == 1369 and img.fits


def test_cli_shows_verdicts_and_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", "--size", "7b", "--target", "orin-nano", "--precision", "fp16"])
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "16,089,489,888" in out and "6.40 GiB" in out
    main(["plan", "--size", "7b", "--target", "orin-nano", "--precision", "int4"])
    out = capsys.readouterr().out
    assert "FITS" in out and "DOES NOT" not in out and "4,785,553,888" in out
    assert "NVIDIA Jetson Orin Nano" in out  # the sources travel with the numbers


def test_cli_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", "--target", "thor", "--precision", "fp8", "--volume-slices", "160", "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "huluexport.plan/1"
    for key in (
        "fits",
        "margin_bytes",
        "memory",
        "weights",
        "kv_bytes_per_token",
        "largest_context_tokens",
        "largest_volume_slices",
        "decode_tok_s_bound_first",
        "ttft_estimate_s",
        "sources",
        "device",
    ):
        assert key in doc, key
    assert set(doc["memory"]) == {"weights", "kv_cache", "activations", "workspace", "total"}
    assert doc["memory"]["total"] == sum(v for k, v in doc["memory"].items() if k != "total")
    assert doc["visual_tokens"] == 16000 and doc["fits"] and doc["compute_precision"] == "fp8"


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["plan", "--target", "h100", "--image", "512by512"])
    assert e.value.code == 2 and "--image '512by512'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["plan", "--target", "h100", "--image", "64x64", "--volume-slices", "3"])
    assert e.value.code != 0 and "at most one" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--precision 'int3'"):
        P.weight_bytes(SIZES["7b"], "int3")
    with pytest.raises(ConfigError, match="--target 'tpu'"):
        P.device("tpu")


def test_fp8_is_not_available_on_orin() -> None:
    p = P.plan("7b", "orin-agx", "fp8", search_volume=False)
    assert not p.supported and not p.fits and any("not supported" in n for n in p.notes)
    assert P.plan("7b", "h100", "fp8", search_volume=False).supported


def test_every_device_figure_names_its_source() -> None:
    for dev in P.DEVICES.values():
        for fld in ("memory_bytes", "bandwidth_bytes_s", "peak_ops", "usable_fraction", "workspace_bytes"):
            assert len(dev.sources.get(fld, "")) > 10, (dev.key, fld)
        assert set(dev.estimates) <= set(dev.sources)
        assert 0.5 < dev.usable_fraction <= 1.0 and dev.peak_ops["fp16"] > 1e12
    host = P.host_profile(bandwidth_bytes_s=10e9)
    assert (
        host.measured
        and host.memory_bytes > 2**30
        and set(host.sources) >= {"memory_bytes", "bandwidth_bytes_s"}
    )


def test_bounds_follow_the_hardware() -> None:
    tok = {
        t: P.plan("7b", t, "fp16", search_volume=False).decode_tok_s_bound_first
        for t in ("h200", "h100", "thor")
    }
    assert tok["h200"] > tok["h100"] > tok["thor"]
    # decode bound = bandwidth / (weights read + KV), by hand for the H100
    p = P.plan("7b", "h100", "fp16", search_volume=False)
    wb = P.weight_bytes(SIZES["7b"], "fp16")
    expect = 3.35e12 / (wb.read_per_decoded_token + 56 * 1024 * p.prompt_tokens)
    assert math.isclose(p.decode_tok_s_bound_first, expect, rel_tol=1e-12)
    # a CT volume costs far more time to first token than text
    vol = P.plan(
        "7b",
        "h100",
        "fp16",
        P.InputSpec(kind="volume", frames=160, height=512, width=512),
        search_volume=False,
    )
    assert vol.ttft_estimate_s > 20 * p.ttft_estimate_s and vol.ttft_parts_s["vision"] > 0


def test_chunking_lowers_activation_memory() -> None:
    vol = P.InputSpec(kind="volume", frames=180, height=512, width=512)
    whole = P.plan("7b", "orin-nano", "int4", vol, search_volume=False)
    chunked = P.plan(
        "7b", "orin-nano", "int4", vol, vision_batch_frames=16, prefill_chunk_tokens=1024, search_volume=False
    )
    assert chunked.memory["activations"] < whole.memory["activations"] / 3
    assert (
        chunked.memory["weights"] == whole.memory["weights"]
        and chunked.memory["kv_cache"] == whole.memory["kv_cache"]
    )
    assert not whole.fits and chunked.fits
