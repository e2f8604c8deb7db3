"""`huluexport plan`: weight bytes from real parameter counts, KV per token, resize rule, verdicts, CLI."""

from __future__ import annotations

import json
import math

import pytest
from hulurt.preprocess import target_size

from huluexport import devices
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


# Expected numbers in this file are derived here from stated sources, never copied from the planner's output:
# parameter counts (the 7B checkpoint index's metadata.total_size = 2 bytes x 8,044,744,944), the shapes of
# the configs (huluexport/config.py), bytes per element (fp16 2; int4 half a byte plus one fp16 scale per 128
# inputs; int8 one byte plus one fp16 scale per output row), and datasheet figures named where used.
N_7B = 8_044_744_944


def _7b_by_hand() -> dict[str, int]:
    """7B parameter groups by hand: the decoder's 2-D matrices (embed + lm_head + per layer q, k, v, o, gate,
    up, down), their output rows, and everything else (vision, projector, norms, biases)."""
    d = SIZES["7b"].decoder
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    mats = 2 * d.vocab * d.hidden + d.layers * (
        2 * q * d.hidden + 2 * kv * d.hidden + 3 * d.hidden * d.intermediate
    )
    rows = 2 * d.vocab + d.layers * (q + 2 * kv + d.hidden + 2 * d.intermediate + d.hidden)
    return {"mats": mats, "rows": rows, "side": N_7B - mats}


def _7b_int4_bytes() -> int:
    h = _7b_by_hand()
    d = SIZES["7b"].decoder
    emb = d.vocab * d.hidden  # embed_tokens: a Gather in the embed piece, left fp16 by quantize --format qdq
    q = h["mats"] - emb
    # every quantized 7B matrix has an input dim divisible by 128 (3584, 18944): one fp16 scale per 128 weights
    return q // 2 + 2 * q // 128 + 2 * emb + 2 * h["side"]


def test_7b_weight_bytes_at_each_precision() -> None:
    cfg = SIZES["7b"]
    assert cfg.num_parameters() == N_7B
    assert (
        P.weight_bytes(cfg, "fp16").total == 16_089_489_888 == 2 * N_7B
    )  # the 7B index's metadata.total_size
    assert P.weight_bytes(cfg, "bf16").total == 2 * N_7B
    assert P.weight_bytes(cfg, "fp32").total == 4 * N_7B
    d = cfg.decoder
    h = _7b_by_hand()
    mats, rows, side = h["mats"], h["rows"], h["side"]  # side stays fp16 when the decoder is quantized
    assert P.weight_bytes(cfg, "int8").total == mats + 2 * rows + 2 * side
    assert d.hidden % 128 == 0 and d.intermediate % 128 == 0
    assert P.weight_bytes(cfg, "int4").total == _7b_int4_bytes()
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
        if precision == "int4":  # the fp16 embedding table counts with the side tensors (huluexport/plan/cost.py)
            emb = cfg.decoder.vocab * cfg.decoder.hidden
            mats, side = mats - emb, side + emb
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


# docs/model.md §3.3 worked examples: (H, W, m, N) -> (h, w, tokens per frame)
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
    """The planner counts visual tokens with the runtime's own resize rule (hulurt.preprocess.target_size)."""
    assert target_size(H, W, 14 * m, N) == (h, w)
    kind = "image" if m == 1 else "volume"
    vl = P.visual_load(SIZES["7b"], P.InputSpec(kind=kind, frames=N, height=H, width=W))
    assert vl.resized == (h, w)
    assert vl.tokens_per_frame == tok and vl.tokens == tok * N


# Jetson Orin Nano 8GB (product page: 8 GB LPDDR5, 102 GB/s) and the 0.80 usable share the registry states
# as its estimate for a headless JetPack 6
NANO_USABLE = int(8 * 2**30 * devices.TARGETS["orin-nano"].hardware.usable_fraction)


def test_orin_nano_7b_fp16_does_not_fit_int4_fits() -> None:
    fp16 = P.plan("7b", "orin-nano", "fp16")
    int4 = P.plan("7b", "orin-nano", "int4")
    assert fp16.usable_bytes == int4.usable_bytes == NANO_USABLE
    assert not fp16.fits and fp16.margin_bytes < NANO_USABLE - 2 * N_7B  # the fp16 weights alone overflow
    assert fp16.memory["weights"] == 2 * N_7B and int4.memory["weights"] == _7b_int4_bytes()
    assert int4.fits and int4.margin_bytes > 0
    # decode streams ~4x fewer weight bytes at int4 (0.5 + 2/128 bytes vs 2 per matrix weight)
    assert int4.decode_tok_s_bound_first > 3 * fp16.decode_tok_s_bound_first
    # one 512x512 image still fits at int4: 518x518 after the resize rule = 37 x 37 patches
    img = P.plan("7b", "orin-nano", "int4", P.image_input("512x512"))
    assert img.visual_tokens == 37 * 37 and img.fits


def test_cli_shows_verdicts_and_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", "--size", "7b", "--target", "orin-nano", "--precision", "fp16"])
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and f"{2 * N_7B:,}" in out and f"{NANO_USABLE / 2**30:.2f} GiB" in out
    main(["plan", "--size", "7b", "--target", "orin-nano", "--precision", "int4"])
    out = capsys.readouterr().out
    assert "FITS" in out and "DOES NOT" not in out and f"{_7b_int4_bytes():,}" in out
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
    assert set(doc["memory"]) == {"weights", "kv_cache", "inputs", "activations", "workspace", "total"}
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
    for dev in (t.hardware for t in devices.TARGETS.values() if t.hardware is not None):
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
    # decode bound = bandwidth / (weights read + KV), by hand for the H100 (datasheet, SXM: 3.35 TB/s): a
    # decode step reads every fp16 decoder weight except the embedding table, of which it gathers one row;
    # the KV cache (56 KiB per token for 7B) holds the default text prompt of 96 tokens
    p = P.plan("7b", "h100", "fp16", search_volume=False)
    d = SIZES["7b"].decoder
    read = 2 * (d.num_parameters() - d.vocab * d.hidden + d.hidden)
    assert p.prompt_tokens == 96
    expect = 3.35e12 / (read + 56 * 1024 * 96)
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
    # 4B: since int4 models what `quantize --format qdq` writes (the embedding table stays fp16), a 7B int4 with
    # a 180-slice volume does not fit an Orin Nano even chunked (margin -0.6 GiB); the 4B shows the same effect,
    # with token reduction keeping 3/4 of the visual tokens (the request's fp32 patches and prompt embeddings are
    # counted: with every token kept it misses by 51 MiB)
    vol = P.InputSpec(kind="volume", frames=180, height=512, width=512, kept_fraction=0.75)
    whole = P.plan("4b", "orin-nano", "int4", vol, search_volume=False)
    chunked = P.plan(
        "4b", "orin-nano", "int4", vol, vision_batch_frames=16, prefill_chunk_tokens=1024, search_volume=False
    )
    assert chunked.memory["activations"] < whole.memory["activations"] / 3
    assert (
        chunked.memory["weights"] == whole.memory["weights"]
        and chunked.memory["kv_cache"] == whole.memory["kv_cache"]
    )
    assert not whole.fits and chunked.fits
