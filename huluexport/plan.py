"""Will this model and input fit this device? Device profiles (with sources) and a memory / latency model.

Arithmetic on HuluConfig and the resize rule of ARCHITECTURE.md 3.3 only; nothing is built or run.
Latencies are bounds or estimates from peak figures, never measurements (that is `huluexport bench`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from huluexport.config import HuluConfig, preset
from huluexport.errors import ConfigError

log = logging.getLogger(__name__)

GiB = 1024**3
GB = 10**9

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
INT4_GROUP = (
    128  # int4: one fp16 scale per 128 input features (AWQ/GPTQ-style group, symmetric, no zero point)
)

QUANT_POLICY = (
    "fp32/fp16/bf16: every tensor at that precision. fp8/int8/int4: the decoder's 2-D matrices "
    "(embed_tokens, q/k/v/o, gate/up/down, lm_head) are quantized (int8: one fp16 scale per output row; "
    f"int4: one fp16 scale per {INT4_GROUP} inputs; fp8: one fp32 scale per matrix); the vision tower, the "
    "projector and all norms/biases stay fp16. int4 is weight-only (fp16 math); int8 and fp8 use the chip's "
    "int8/fp8 tensor cores where it has them, else fp16 math. KV cache fp16."
)

# --------------------------------------------------------------------------------------------------
# Device profiles (data). Every figure names its public source; `estimates` lists figures derived or guessed.
# Memory sizes are binary (GiB): DRAM/HBM parts are binary-sized even where vendors write "GB".
# Peak compute is dense (no 2:4 sparsity) tensor-core throughput in ops/s.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProfile:
    key: str
    name: str
    memory_bytes: int
    usable_fraction: float  # of memory_bytes that one inference process can use (OS/display share on Jetsons)
    bandwidth_bytes_s: float  # peak DRAM bandwidth
    peak_ops: dict[str, float]  # dense tensor ops/s per *compute* precision the chip has natively
    unified_memory: bool  # CPU and GPU share the DRAM (Jetson)
    workspace_bytes: int  # CUDA context + engine runtime + tactic workspace (estimate for every device)
    sources: dict[str, str]  # field -> public source
    estimates: tuple[str, ...] = ()  # fields that are derived or estimated, not read off a datasheet
    measured: bool = False  # figures measured on this host at run time (target "cpu")

    @property
    def usable_bytes(self) -> int:
        return int(self.memory_bytes * self.usable_fraction)

    @property
    def native_precisions(self) -> tuple[str, ...]:
        return tuple(p for p in ("fp32", "fp16", "bf16", "fp8", "int8") if p in self.peak_ops)

    def supports(self, precision: str) -> bool:
        """Can this chip run the precision at all (natively or as weight-only with fp16 math)?"""
        if precision == "int4":
            return "fp16" in self.peak_ops or "fp32" in self.peak_ops
        if precision == "fp8":
            return "fp8" in self.peak_ops
        return precision in self.peak_ops or (
            precision in ("fp16", "bf16", "int8") and "fp32" in self.peak_ops
        )


# Ampere (Jetson Orin, GA10B) tensor cores deliver 2048 dense fp16 FLOP/clk/SM and 4096 dense int8 OP/clk/SM:
# the "Jetson AGX Orin technical brief" gives 170 sparse INT8 TOPS for the 2048-core (16 SM) GPU at 1.3 GHz,
# i.e. 16 * 8192 (sparse) * 1.3e9. The other Orins follow from their SM count and max GPU clock.
def _orin_peaks(sms: int, clock_hz: float) -> dict[str, float]:
    fp16 = sms * 2048 * clock_hz
    return {"fp32": sms * 256 * clock_hz, "fp16": fp16, "bf16": fp16, "int8": 2 * fp16}


_ORIN_PEAK_SRC = (
    "derived: SMs x 2048 dense fp16 FLOP/clk/SM x max GPU clock (per-SM rate from NVIDIA 'Jetson AGX Orin "
    "Series technical brief': 170 sparse INT8 TOPS for 16 SMs at 1.3 GHz); int8 = 2x fp16; fp32 = 128 CUDA "
    "cores x 2 per SM. No FP8 on Ampere."
)

DEVICES: dict[str, DeviceProfile] = {
    "orin-nano": DeviceProfile(
        key="orin-nano",
        name="Jetson Orin Nano 8GB (MAXN SUPER, JetPack 6.2)",
        memory_bytes=8 * GiB,
        usable_fraction=0.80,
        bandwidth_bytes_s=102e9,
        peak_ops=_orin_peaks(8, 1.020e9),
        unified_memory=True,
        workspace_bytes=int(0.75 * GiB),
        sources={
            "memory_bytes": "NVIDIA Jetson Orin Nano Super Developer Kit product page: 8GB 128-bit LPDDR5",
            "bandwidth_bytes_s": "NVIDIA Jetson Orin Nano Super Developer Kit product page: 102 GB/s",
            "peak_ops": _ORIN_PEAK_SRC
            + " Orin Nano: 8 SMs (1024 cores), 1020 MHz in MAXN SUPER; cross-check: "
            "8 x 8192 x 1.02e9 = 67 sparse INT8 TOPS, the product page's figure",
            "usable_fraction": "estimate: headless JetPack 6 (L4T, no desktop) keeps ~1.5 GB of shared DRAM",
            "workspace_bytes": "estimate: CUDA context + TensorRT runtime libraries mapped in shared DRAM",
        },
        estimates=("usable_fraction", "workspace_bytes", "peak_ops"),
    ),
    "orin-nx": DeviceProfile(
        key="orin-nx",
        name="Jetson Orin NX 16GB (MAXN SUPER, JetPack 6.2)",
        memory_bytes=16 * GiB,
        usable_fraction=0.85,
        bandwidth_bytes_s=102.4e9,
        peak_ops=_orin_peaks(8, 1.173e9),
        unified_memory=True,
        workspace_bytes=int(0.75 * GiB),
        sources={
            "memory_bytes": "NVIDIA Jetson Orin NX Series data sheet: 16GB 128-bit LPDDR5",
            "bandwidth_bytes_s": "NVIDIA Jetson Orin NX Series data sheet: 102.4 GB/s",
            "peak_ops": _ORIN_PEAK_SRC
            + " Orin NX 16GB: 8 SMs (1024 cores), 1173 MHz in MAXN SUPER (JetPack 6.2 "
            "release notes / Orin Nano Super announcement); cross-check at the original 918 MHz: GPU 60 + "
            "DLA 40 = the data sheet's 100 TOPS",
            "usable_fraction": "estimate: headless JetPack 6 keeps ~1.5-2 GB of the shared DRAM",
            "workspace_bytes": "estimate: CUDA context + TensorRT runtime libraries mapped in shared DRAM",
        },
        estimates=("usable_fraction", "workspace_bytes", "peak_ops"),
    ),
    "orin-agx": DeviceProfile(
        key="orin-agx",
        name="Jetson AGX Orin 64GB (MAXN)",
        memory_bytes=64 * GiB,
        usable_fraction=0.90,
        bandwidth_bytes_s=204.8e9,
        peak_ops=_orin_peaks(16, 1.3e9),
        unified_memory=True,
        workspace_bytes=int(0.75 * GiB),
        sources={
            "memory_bytes": "NVIDIA Jetson AGX Orin Series data sheet: 64GB 256-bit LPDDR5",
            "bandwidth_bytes_s": "NVIDIA Jetson AGX Orin Series data sheet: 204.8 GB/s",
            "peak_ops": _ORIN_PEAK_SRC + " AGX Orin 64GB: 16 SMs (2048 cores, 64 tensor cores), 1.3 GHz",
            "usable_fraction": "estimate: JetPack 6 with desktop keeps ~3-6 GB of the shared DRAM",
            "workspace_bytes": "estimate: CUDA context + TensorRT runtime libraries mapped in shared DRAM",
        },
        estimates=("usable_fraction", "workspace_bytes", "peak_ops"),
    ),
    "thor": DeviceProfile(
        key="thor",
        name="Jetson AGX Thor Developer Kit (T5000, Blackwell)",
        memory_bytes=128 * GiB,
        usable_fraction=0.90,
        bandwidth_bytes_s=273e9,
        # 2070 sparse FP4 TFLOPS; dense FP4 = 1035, FP8 = 517.5, FP16 = 258.75 (each halving is an estimate)
        peak_ops={
            "fp32": 2560 * 2 * 1.57e9,
            "fp16": 258.75e12,
            "bf16": 258.75e12,
            "fp8": 517.5e12,
            "int8": 517.5e12,
        },
        unified_memory=True,
        workspace_bytes=int(1.0 * GiB),
        sources={
            "memory_bytes": "NVIDIA Jetson AGX Thor Developer Kit product page: 128 GB 256-bit LPDDR5X",
            "bandwidth_bytes_s": "NVIDIA Jetson AGX Thor Developer Kit product page: 273 GB/s",
            "peak_ops": "NVIDIA Jetson AGX Thor product page: 2070 FP4 TFLOPS (sparse), 2560-core Blackwell, "
            "96 5th-gen tensor cores, 1.57 GHz; FP8/FP4 native. Dense fp16 = 2070/8 is an estimate "
            "(sparse->dense, FP4->FP8->FP16 each x1/2); fp32 = cores x 2 x clock",
            "usable_fraction": "estimate: JetPack 7 keeps ~6-12 GB of the shared DRAM",
            "workspace_bytes": "estimate: CUDA context + TensorRT runtime libraries mapped in shared DRAM",
        },
        estimates=("usable_fraction", "workspace_bytes", "peak_ops"),
    ),
    "rtx-4090": DeviceProfile(
        key="rtx-4090",
        name="GeForce RTX 4090 24GB (Ada)",
        memory_bytes=24 * GiB,
        usable_fraction=0.95,
        bandwidth_bytes_s=1008e9,
        peak_ops={"fp32": 82.6e12, "fp16": 165.2e12, "bf16": 165.2e12, "fp8": 330.3e12, "int8": 660.6e12},
        unified_memory=False,
        workspace_bytes=int(0.5 * GiB),
        sources={
            "memory_bytes": "NVIDIA Ada Lovelace GPU architecture whitepaper (RTX 4090 column): 24 GB GDDR6X",
            "bandwidth_bytes_s": "NVIDIA Ada Lovelace GPU architecture whitepaper: 1008 GB/s",
            "peak_ops": "NVIDIA Ada Lovelace GPU architecture whitepaper, RTX 4090 dense: FP16/BF16 tensor, "
            "FP32 accumulate: 165.2 TFLOPS, INT8 660.6 TOPS, FP32 82.6 TFLOPS; FP8 (FP32 acc.) taken as "
            "2x FP16 (330.3, our estimate; the other figures are the whitepaper's)",
            "usable_fraction": "estimate: display/driver reserve on a discrete card",
            "workspace_bytes": "estimate: CUDA context + cuBLAS/TensorRT workspace on the device",
        },
        estimates=("usable_fraction", "workspace_bytes", "peak_ops"),
    ),
    "h100": DeviceProfile(
        key="h100",
        name="H100 SXM5 80GB (Hopper)",
        memory_bytes=80 * GiB,
        usable_fraction=0.97,
        bandwidth_bytes_s=3.35e12,
        peak_ops={"fp32": 66.9e12, "fp16": 989.4e12, "bf16": 989.4e12, "fp8": 1978.9e12, "int8": 1978.9e12},
        unified_memory=False,
        workspace_bytes=int(0.5 * GiB),
        sources={
            "memory_bytes": "NVIDIA H100 Tensor Core GPU datasheet (SXM): 80 GB HBM3",
            "bandwidth_bytes_s": "NVIDIA H100 Tensor Core GPU datasheet (SXM): 3.35 TB/s",
            "peak_ops": "NVIDIA H100 Tensor Core GPU datasheet (SXM), halved from the sparse figures: FP16 "
            "1979 -> 989.4 TFLOPS, FP8 3958 -> 1978.9, INT8 3958 -> 1978.9 TOPS; FP32 66.9 TFLOPS",
            "usable_fraction": "estimate: CUDA context and driver reserve",
            "workspace_bytes": "estimate: CUDA context + cuBLAS/TensorRT workspace on the device",
        },
        estimates=("usable_fraction", "workspace_bytes"),
    ),
    "h200": DeviceProfile(
        key="h200",
        name="H200 SXM 141GB (Hopper)",
        memory_bytes=141 * GiB,
        usable_fraction=0.97,
        bandwidth_bytes_s=4.8e12,
        peak_ops={"fp32": 66.9e12, "fp16": 989.4e12, "bf16": 989.4e12, "fp8": 1978.9e12, "int8": 1978.9e12},
        unified_memory=False,
        workspace_bytes=int(0.5 * GiB),
        sources={
            "memory_bytes": "NVIDIA H200 Tensor Core GPU datasheet (SXM): 141 GB HBM3e",
            "bandwidth_bytes_s": "NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s",
            "peak_ops": "NVIDIA H200 Tensor Core GPU datasheet (SXM), halved from the sparse figures: FP16 "
            "989.5, FP8 1979, INT8 1979 dense; FP32 67 TFLOPS",
            "usable_fraction": "estimate: CUDA context and driver reserve",
            "workspace_bytes": "estimate: CUDA context + cuBLAS/TensorRT workspace on the device",
        },
        estimates=("usable_fraction", "workspace_bytes"),
    ),
}

TARGETS = (*DEVICES, "cpu")


def probe_memory_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Copy bandwidth of this host in bytes/s (read + write counted), best of `repeats` numpy copies.

    A large `np.copyto` streams `nbytes` in and `nbytes` out, so it counts 2*nbytes per copy; the best of a
    few runs is the usual STREAM-copy convention. It measures one thread (numpy copies are single-threaded).
    """
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch pages first
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def host_profile(bandwidth_bytes_s: float | None = None) -> DeviceProfile:
    """The `cpu` target: this machine's memory and (measured) bandwidth; compute peak is an estimate."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    bw = probe_memory_bandwidth() if bandwidth_bytes_s is None else bandwidth_bytes_s
    cores = os.cpu_count() or 1
    fp32 = cores * 2.5e9 * 32  # 2 FMA units x 8 fp32 lanes (AVX2) x 2 FLOP at ~2.5 GHz
    return DeviceProfile(
        key="cpu",
        name=f"this host ({cores} CPU cores)",
        memory_bytes=total,
        usable_fraction=0.85,
        bandwidth_bytes_s=bw,
        peak_ops={"fp32": fp32, "int8": 2 * fp32},
        unified_memory=True,
        workspace_bytes=int(0.25 * GiB),
        sources={
            "memory_bytes": "measured: os.sysconf(SC_PHYS_PAGES) on this host",
            "bandwidth_bytes_s": "measured: best-of-5 single-thread numpy copy of 256 MiB (read+write)",
            "peak_ops": "estimate: cores x 2.5 GHz x 32 fp32 FLOP/clk (AVX2, 2 FMA units); int8 = 2x (VNNI)",
            "usable_fraction": "estimate: OS and other processes",
            "workspace_bytes": "estimate: Python + onnxruntime arenas",
        },
        estimates=("peak_ops", "usable_fraction", "workspace_bytes"),
        measured=True,
    )


def device(target: str, *, bandwidth_bytes_s: float | None = None) -> DeviceProfile:
    if target == "cpu":
        return host_profile(bandwidth_bytes_s)
    try:
        return DEVICES[target]
    except KeyError:
        raise ConfigError(
            f"--target {target!r} is not a known device; expected one of {', '.join(TARGETS)}"
        ) from None


# --------------------------------------------------------------------------------------------------
# Inputs: the resize rule of ARCHITECTURE.md 3.3 (local copy so the planner needs no media stack)
# --------------------------------------------------------------------------------------------------


def resized_hw(
    height: int,
    width: int,
    factor: int,
    frames_in_request: int,
    min_tokens: int = 16,
    max_tokens: int = 16384,
) -> tuple[int, int]:
    """Target (h, w) of ARCHITECTURE.md 3.3 "simple batched resize" (ported in our words from
    ZJUI-AI4H/Hulu-Med image_processing_hulumed.py): round to multiples of f, shrink to the per-frame share of
    the request budget, grow to the minimum."""
    min_px, max_px = min_tokens * factor * factor, max_tokens * factor * factor
    budget = max_px // frames_in_request
    h, w = round(height / factor) * factor, round(width / factor) * factor  # Python round: half to even
    if h * w > budget:
        beta = math.sqrt(height * width / budget)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    if h * w < min_px:
        beta = math.sqrt(min_px / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class InputSpec:
    """One request: text only, one 2-D image, an N-slice volume or an N-frame video, plus its text."""

    kind: str = "text"  # text | image | volume | video
    frames: int = 0
    height: int = 0
    width: int = 0
    prompt_tokens: int = 96  # question + chat template (estimate of a typical clinical question)
    max_new_tokens: int = 512

    @property
    def merge(self) -> int:
        return 1 if self.kind == "image" else 2

    def separator_tokens(self) -> int:
        # volume: "," between slice placeholders; video: "Time 12.0s:" ~6 tokens per frame (estimate)
        return {"text": 0, "image": 0, "volume": self.frames, "video": 6 * self.frames}[self.kind]


def image_input(spec: str, **kw: Any) -> InputSpec:
    """Parse `--image WxH` (e.g. 512x512)."""
    try:
        w_s, h_s = spec.lower().split("x")
        w, h = int(w_s), int(h_s)
    except ValueError:
        raise ConfigError(f"--image {spec!r}: expected WIDTHxHEIGHT in pixels, e.g. 512x512") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"--image {spec!r}: width and height must be positive")
    return InputSpec(kind="image", frames=1, height=h, width=w, **kw)


@dataclass(frozen=True)
class VisualLoad:
    frames: int
    resized: tuple[int, int]
    patches_per_frame: int
    tokens_per_frame: int

    @property
    def tokens(self) -> int:
        return self.frames * self.tokens_per_frame


def visual_load(cfg: HuluConfig, inp: InputSpec) -> VisualLoad:
    if inp.kind == "text":
        return VisualLoad(0, (0, 0), 0, 0)
    if inp.frames <= 0 or inp.height <= 0 or inp.width <= 0:
        raise ConfigError(f"{inp.kind} input needs frames, height and width > 0; got {inp}")
    pp = cfg.preprocess
    m = inp.merge
    h, w = resized_hw(inp.height, inp.width, pp.patch * m, inp.frames, pp.min_tokens, pp.max_tokens)
    gh, gw = h // pp.patch, w // pp.patch
    return VisualLoad(inp.frames, (h, w), gh * gw, (gh // m) * (gw // m))


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def decoder_matrices(cfg: HuluConfig) -> list[tuple[str, int, int]]:
    """(name, rows, cols) of every 2-D decoder matrix; cols is the input (reduction) dim."""
    d = cfg.decoder
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    mats = [("embed_tokens", d.vocab, d.hidden)]
    for i in range(d.layers):
        mats += [
            (f"layers.{i}.q_proj", q, d.hidden),
            (f"layers.{i}.k_proj", kv, d.hidden),
            (f"layers.{i}.v_proj", kv, d.hidden),
            (f"layers.{i}.o_proj", d.hidden, q),
            (f"layers.{i}.gate_proj", d.intermediate, d.hidden),
            (f"layers.{i}.up_proj", d.intermediate, d.hidden),
            (f"layers.{i}.down_proj", d.hidden, d.intermediate),
        ]
    if not d.tie_embeddings:
        mats.append(("lm_head", d.vocab, d.hidden))
    return mats


def _matrix_bytes(rows: int, cols: int, precision: str) -> int:
    n = rows * cols
    if precision in ("fp32", "fp16", "bf16"):
        return int(n * WEIGHT_BYTES[precision])
    if precision == "int8":
        return n + 2 * rows
    if precision == "int4":
        return n // 2 + (n % 2) + 2 * rows * math.ceil(cols / INT4_GROUP)
    if precision == "fp8":
        return n + 4
    raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class WeightBytes:
    precision: str
    vision: int
    projector: int
    decoder_matrices: int
    decoder_other: int  # norms, biases (fp16 when quantized)
    embed_tokens: int  # part of decoder_matrices; only one row per token is read when decoding
    embed_row: int
    params: dict[str, int] = field(default_factory=dict)  # the parameter count behind each group

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.decoder_matrices + self.decoder_other

    @property
    def decoder(self) -> int:
        return self.decoder_matrices + self.decoder_other

    @property
    def read_per_decoded_token(self) -> int:
        """Bytes of weights a decode step streams: the decoder without the embedding table, plus one row."""
        return self.decoder - self.embed_tokens + self.embed_row


def weight_bytes(cfg: HuluConfig, precision: str) -> WeightBytes:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    quantized = precision in ("fp8", "int8", "int4")
    side = "fp16" if quantized else precision  # vision, projector, norms, biases
    vp = cfg.vision.num_parameters()
    pp = cfg.projector.num_parameters(cfg.vision.hidden, cfg.decoder.hidden)
    mats = decoder_matrices(cfg)
    mat_params = sum(r * c for _, r, c in mats)
    other = cfg.decoder.num_parameters() - mat_params
    if other < 0:
        raise ConfigError(f"decoder matrices ({mat_params}) exceed the decoder's parameter count")
    emb = _matrix_bytes(cfg.decoder.vocab, cfg.decoder.hidden, precision)
    return WeightBytes(
        precision=precision,
        vision=int(vp * WEIGHT_BYTES[side]),
        projector=int(pp * WEIGHT_BYTES[side]),
        decoder_matrices=sum(_matrix_bytes(r, c, precision) for _, r, c in mats),
        decoder_other=int(other * WEIGHT_BYTES[side]),
        embed_tokens=emb,
        embed_row=math.ceil(emb / cfg.decoder.vocab),
        params={"vision": vp, "projector": pp, "decoder_matrices": mat_params, "decoder_other": other},
    )


# --------------------------------------------------------------------------------------------------
# Activations and FLOPs
# --------------------------------------------------------------------------------------------------


def vision_activation_bytes(
    cfg: HuluConfig, vl: VisualLoad, act_bytes: int, fused_attention: bool
) -> dict[str, int]:
    """Peak live bytes of one vision call (all frames of the input in one batch, as the contract feeds them).

    Live at the peak of one encoder layer: the fp32 input patches, residual + normed stream, then either
    q/k/v/out (+ the [frames, heads, n, n] scores and softmax, unless attention is fused) or the MLP hidden
    twice (fc1 out, gelu out); plus the projected output rows.
    """
    if vl.frames == 0:
        return {"total": 0, "attention_scores_unfused": 0}
    v = cfg.vision
    t, n = vl.frames, vl.patches_per_frame
    patches = t * n * v.patch_dim * 4
    stream = 2 * t * n * v.hidden * act_bytes
    scores = 2 * t * v.heads * n * n * act_bytes
    attn = 4 * t * n * v.hidden * act_bytes + (0 if fused_attention else scores)
    mlp = 2 * t * n * v.intermediate * act_bytes
    out = vl.tokens * cfg.decoder.hidden * act_bytes
    return {"total": patches + stream + max(attn, mlp) + out, "attention_scores_unfused": scores}


def prefill_activation_bytes(
    cfg: HuluConfig, seq: int, act_bytes: int, fused_attention: bool
) -> dict[str, int]:
    """Peak live bytes of the decoder prefill over `seq` tokens (KV cache counted separately)."""
    d = cfg.decoder
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    stream = 2 * seq * d.hidden * act_bytes
    scores = 2 * d.heads * seq * seq * act_bytes
    attn = seq * (q + 2 * kv + q) * act_bytes + (0 if fused_attention else scores)
    mlp = 3 * seq * d.intermediate * act_bytes
    logits = d.vocab * 4  # last position only (contract)
    return {"total": stream + max(attn, mlp) + logits, "attention_scores_unfused": scores}


def vision_flops(cfg: HuluConfig, vl: VisualLoad) -> float:
    if vl.frames == 0:
        return 0.0
    v = cfg.vision
    n = vl.patches_per_frame
    per_layer_params = 4 * v.hidden * v.hidden + 2 * v.hidden * v.intermediate
    per_frame = 2 * v.patch_dim * v.hidden * n + v.layers * (2 * per_layer_params * n + 4 * n * n * v.hidden)
    proj = 2 * cfg.projector.num_parameters(v.hidden, cfg.decoder.hidden) * vl.tokens_per_frame
    return float(vl.frames * (per_frame + proj))


def prefill_flops(cfg: HuluConfig, seq: int) -> float:
    """2 x matmul params x tokens + causal attention (QK^T and AV over half the square); lm_head: 1 row."""
    d = cfg.decoder
    layer_params = sum(r * c for name, r, c in decoder_matrices(cfg) if name.startswith("layers."))
    attn = d.layers * 2 * 2 * d.heads * d.head_dim * seq * (seq + 1) / 2
    return float(2 * layer_params * seq + attn + 2 * d.vocab * d.hidden)


def compute_precision(dev: DeviceProfile, precision: str) -> str:
    """The tensor-core precision the math runs in: int4 is weight-only (fp16 math); int8/fp8 use their own
    units where the chip has them; anything the chip lacks falls back to fp16, then fp32."""
    wanted = {"int4": "fp16"}.get(precision, precision)
    for p in (wanted, "fp16", "fp32"):
        if p in dev.peak_ops:
            return p
    raise ConfigError(f"device {dev.key} has no peak figure for {precision}")


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    size: str
    target: str
    device_name: str
    precision: str
    compute_precision: str
    supported: bool
    input: dict[str, Any]
    visual_tokens: int
    resized_hw: tuple[int, int]
    prompt_tokens: int  # text + visual tokens of the prompt
    context_tokens: int  # prompt + max_new_tokens
    usable_bytes: int
    memory: dict[str, int]  # weights, kv_cache, activations, workspace, total
    weights: dict[str, int]
    kv_bytes_per_token: int
    fits: bool
    margin_bytes: int
    largest_context_tokens: int
    largest_volume_slices: int  # most slices at 512x512 that fit (0 = none), up to the search limit
    volume_slices_all_fit_up_to: int  # every slice count 1..this fits
    largest_volume_search_limit: int
    decode_tok_s_bound_first: float
    decode_tok_s_bound_last: float
    ttft_estimate_s: float
    ttft_parts_s: dict[str, float]
    fused_attention: bool
    vision_batch_frames: int | None
    prefill_chunk_tokens: int | None
    attention_scores_unfused_bytes: int
    notes: tuple[str, ...]
    sources: dict[str, str]
    estimates: tuple[str, ...]
    device: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": "huluexport.plan/1", **asdict(self)}


VOLUME_SEARCH_LIMIT = 2048


@dataclass(frozen=True)
class Schedule:
    """How the runtime feeds the pieces: all frames of an input in one vision call and the whole prompt in one
    prefill (None, what the contract's single calls do), or in chunks (exact: attention is per frame, and a
    chunked prefill appends to the KV cache)."""

    fused_attention: bool = True
    vision_batch_frames: int | None = None
    prefill_chunk_tokens: int | None = None


def _memory(
    cfg: HuluConfig, dev: DeviceProfile, inp: InputSpec, wb: WeightBytes, sched: Schedule, act_bytes: int
) -> tuple[dict[str, int], VisualLoad, int, dict[str, int], dict[str, int]]:
    vl = visual_load(cfg, inp)
    prompt = inp.prompt_tokens + inp.separator_tokens() + vl.tokens
    ctx = prompt + inp.max_new_tokens
    kv = cfg.decoder.kv_bytes_per_token(2) * ctx
    fused = sched.fused_attention
    vb = vl.frames if sched.vision_batch_frames is None else min(vl.frames, sched.vision_batch_frames)
    va = vision_activation_bytes(cfg, replace(vl, frames=vb), act_bytes, fused)
    out_rows = vl.tokens * cfg.decoder.hidden * act_bytes  # every frame's projected rows stay until embed
    va = {**va, "total": va["total"] - vb * vl.tokens_per_frame * cfg.decoder.hidden * act_bytes + out_rows}
    chunk = prompt if sched.prefill_chunk_tokens is None else min(prompt, sched.prefill_chunk_tokens)
    pa = prefill_activation_bytes(cfg, chunk, act_bytes, fused)
    if chunk < prompt and not fused:  # a chunk's queries see every earlier key
        pa = {**pa, "attention_scores_unfused": 2 * cfg.decoder.heads * chunk * prompt * act_bytes}
    # vision runs before prefill; its output rows (counted in va) are the only thing that outlives it
    acts = max(va["total"], pa["total"] + out_rows)
    mem = {"weights": wb.total, "kv_cache": kv, "activations": acts, "workspace": dev.workspace_bytes}
    mem["total"] = sum(mem.values())
    return mem, vl, prompt, va, pa


def plan(
    size: str | HuluConfig,
    target: str | DeviceProfile,
    precision: str,
    inp: InputSpec | None = None,
    *,
    fused_attention: bool | None = None,
    vision_batch_frames: int | None = None,
    prefill_chunk_tokens: int | None = None,
    search_volume: bool = True,
) -> Plan:
    cfg = preset(size) if isinstance(size, str) else size
    dev = device(target) if isinstance(target, str) else target
    inp = inp or InputSpec()
    if inp.max_new_tokens < 0 or inp.prompt_tokens < 0:
        raise ConfigError(
            f"--max-new-tokens and prompt tokens must be >= 0; got {inp.max_new_tokens}, {inp.prompt_tokens}"
        )
    wb = weight_bytes(cfg, precision)
    fused = (dev.key != "cpu") if fused_attention is None else fused_attention
    for name, val in (("--vision-batch", vision_batch_frames), ("--prefill-chunk", prefill_chunk_tokens)):
        if val is not None and val < 1:
            raise ConfigError(f"{name} must be >= 1; got {val}")
    sched = Schedule(fused, vision_batch_frames, prefill_chunk_tokens)
    act_bytes = 4 if precision == "fp32" else 2
    mem, vl, prompt, va, pa = _memory(cfg, dev, inp, wb, sched, act_bytes)
    usable = dev.usable_bytes
    fits = mem["total"] <= usable
    notes: list[str] = [QUANT_POLICY]
    supported = dev.supports(precision)
    if not supported:
        notes.append(
            f"{precision} is not supported by {dev.name} (native: {', '.join(dev.native_precisions)}); "
            "an engine at this precision cannot be built there"
        )
    cp = compute_precision(dev, precision)
    if precision in ("int8", "fp8") and cp != precision:
        notes.append(
            f"{precision} weights on {dev.key}: no native {precision} tensor math, planned as "
            f"{cp} math on dequantized weights"
        )
    ctx = prompt + inp.max_new_tokens
    if ctx > cfg.decoder.max_position:
        notes.append(f"context {ctx} exceeds the model's max_position {cfg.decoder.max_position}")

    # largest context of a text-only request: KV grows with every token, prefill activations with the chunk
    kv_tok = cfg.decoder.kv_bytes_per_token(2)
    lo, hi = 0, cfg.decoder.max_position
    while lo < hi:
        mid = (lo + hi + 1) // 2
        txt = InputSpec(prompt_tokens=mid, max_new_tokens=0)
        if _memory(cfg, dev, txt, wb, sched, act_bytes)[0]["total"] <= usable:
            lo = mid
        else:
            hi = mid - 1
    largest_ctx = lo

    # volumes: token count is not monotone in the slice count (the shared budget is floored per frame), so
    # scan every count and report both the largest that fits and the count up to which all fit
    largest_vol, all_fit_to = 0, 0
    if search_volume:
        for n in range(1, VOLUME_SEARCH_LIMIT + 1):
            vol = replace(inp, kind="volume", frames=n, height=512, width=512)
            if _memory(cfg, dev, vol, wb, sched, act_bytes)[0]["total"] <= usable:
                largest_vol = n
                all_fit_to = n if all_fit_to == n - 1 else all_fit_to

    # decode bound: bytes streamed per token = weights read + KV at the current length
    bw = dev.bandwidth_bytes_s
    first = bw / (wb.read_per_decoded_token + kv_tok * prompt)
    last = bw / (wb.read_per_decoded_token + kv_tok * ctx)
    peak = dev.peak_ops[cp]
    vis_t = max(vision_flops(cfg, vl) / peak, (wb.vision + wb.projector) / bw) if vl.frames else 0.0
    pre_t = max(prefill_flops(cfg, prompt) / peak, wb.read_per_decoded_token / bw)
    parts = {"vision": vis_t, "prefill": pre_t}

    return Plan(
        size=cfg.name,
        target=dev.key,
        device_name=dev.name,
        precision=precision,
        compute_precision=cp,
        supported=supported,
        input=asdict(inp),
        visual_tokens=vl.tokens,
        resized_hw=vl.resized,
        prompt_tokens=prompt,
        context_tokens=ctx,
        usable_bytes=usable,
        memory=mem,
        weights={
            "vision": wb.vision,
            "projector": wb.projector,
            "decoder": wb.decoder,
            "total": wb.total,
            "read_per_decoded_token": wb.read_per_decoded_token,
        },
        kv_bytes_per_token=kv_tok,
        fits=fits and supported,
        margin_bytes=usable - mem["total"],
        largest_context_tokens=int(largest_ctx),
        largest_volume_slices=largest_vol,
        volume_slices_all_fit_up_to=all_fit_to,
        largest_volume_search_limit=VOLUME_SEARCH_LIMIT,
        decode_tok_s_bound_first=first,
        decode_tok_s_bound_last=last,
        ttft_estimate_s=vis_t + pre_t,
        ttft_parts_s=parts,
        fused_attention=fused,
        vision_batch_frames=vision_batch_frames,
        prefill_chunk_tokens=prefill_chunk_tokens,
        attention_scores_unfused_bytes=max(va["attention_scores_unfused"], pa["attention_scores_unfused"]),
        notes=tuple(notes),
        sources=dict(dev.sources),
        estimates=dev.estimates,
        device={
            "memory_bytes": dev.memory_bytes,
            "usable_fraction": dev.usable_fraction,
            "bandwidth_bytes_s": dev.bandwidth_bytes_s,
            "peak_ops": dict(dev.peak_ops),
            "native_precisions": list(dev.native_precisions),
            "unified_memory": dev.unified_memory,
            "measured": dev.measured,
        },
    )


def fmt_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, div in (("GiB", GiB), ("MiB", 2**20), ("KiB", 1024)):
        if n >= div:
            return f"{sign}{n / div:.2f} {unit}"
    return f"{sign}{int(n)} B"


def render_plan(p: Plan) -> Any:
    """A rich renderable (Group of tables) for the terminal."""
    from rich.console import Group
    from rich.table import Table

    verdict = "[bold green]FITS[/]" if p.fits else "[bold red]DOES NOT FIT[/]"
    if not p.supported:
        verdict = f"[bold red]NOT SUPPORTED[/] ({p.precision} is not native here; memory would be)"
    head = Table(title=f"huluexport plan: {p.size} on {p.device_name}, {p.precision}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    inp = p.input
    what = (
        inp["kind"]
        if inp["kind"] == "text"
        else (
            f"{inp['kind']} {inp['frames']}x{inp['width']}x{inp['height']} "
            f"-> resized {p.resized_hw[1]}x{p.resized_hw[0]}"
        )
    )
    head.add_row("input", what)
    head.add_row(
        "tokens",
        f"{p.visual_tokens} visual + {p.prompt_tokens - p.visual_tokens} text = {p.prompt_tokens} "
        f"prompt; +{inp['max_new_tokens']} new = {p.context_tokens} context",
    )
    head.add_row(
        "verdict",
        f"{verdict}: needs {fmt_bytes(p.memory['total'])} of {fmt_bytes(p.usable_bytes)} usable "
        f"(margin {fmt_bytes(p.margin_bytes)})",
    )
    mem = Table(title="memory")
    mem.add_column("part")
    mem.add_column("bytes", justify="right")
    mem.add_column("size", justify="right")
    for k, v in p.memory.items():
        mem.add_row(k, f"{v:,}", fmt_bytes(v))
    mem.add_row("usable on device", f"{p.usable_bytes:,}", fmt_bytes(p.usable_bytes))
    perf = Table(title="limits and speed (upper bounds / estimates)", show_header=False)
    perf.add_column(style="bold")
    perf.add_column()
    perf.add_row(
        "weights (vision+proj / decoder)",
        f"{fmt_bytes(p.weights['vision'] + p.weights['projector'])} / {fmt_bytes(p.weights['decoder'])}",
    )
    perf.add_row("KV cache per token", fmt_bytes(p.kv_bytes_per_token))
    perf.add_row("largest text-only context that fits", f"{p.largest_context_tokens:,} tokens")
    lim = p.largest_volume_search_limit
    vol = f">= {lim}" if p.largest_volume_slices >= lim else str(p.largest_volume_slices)
    perf.add_row(
        "largest 512x512 volume that fits",
        f"{vol} slices (every count up to {p.volume_slices_all_fit_up_to} fits)",
    )
    perf.add_row(
        "decode tok/s bound (first / last token)",
        f"{p.decode_tok_s_bound_first:.1f} / {p.decode_tok_s_bound_last:.1f}",
    )
    perf.add_row(
        "time to first token (est.)",
        f"{p.ttft_estimate_s * 1e3:.0f} ms (vision "
        f"{p.ttft_parts_s['vision'] * 1e3:.0f} + prefill {p.ttft_parts_s['prefill'] * 1e3:.0f}) at 100% of "
        f"peak {p.compute_precision}",
    )
    perf.add_row(
        "schedule",
        ("fused (flash) attention" if p.fused_attention else "unfused attention")
        + f" (unfused scores would need {fmt_bytes(p.attention_scores_unfused_bytes)}); vision batch "
        f"{p.vision_batch_frames or 'all'} frames; prefill chunk {p.prefill_chunk_tokens or 'whole prompt'}",
    )
    notes = Table(title="notes and sources", show_header=False)
    notes.add_column()
    for n in p.notes:
        notes.add_row(n)
    for k, s in p.sources.items():
        notes.add_row(f"{k}{' (estimate)' if k in p.estimates else ''}: {s}")
    return Group(head, mem, perf, notes)
