"""The cost model: bytes of weights at each precision, activation peaks and FLOPs of the vision and prefill
calls. Arithmetic on HuluConfig only; nothing is built or run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hulurt import schedule
from hulurt.schedule import ModelShape

from huluexport.config import HuluConfig
from huluexport.devices import DeviceProfile
from huluexport.errors import ConfigError
from huluexport.plan.inputs import VisualLoad

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
# int4 is exactly what `huluexport quantize --format qdq` writes (huluexport/export/qdq.py, DEFAULT_BLOCK):
# one fp16 scale per 128 input features of an output column, symmetric, no zero points; the decoder's
# projections and lm_head only (embed_tokens lives in the embed piece and stays fp16). tests/export/test_qdq.py
# compares this model with the bytes quantize writes.
INT4_GROUP = 128

QUANT_POLICY = (
    "fp32/fp16/bf16: every tensor at that precision. fp8/int8: the decoder's 2-D matrices "
    "(embed_tokens, q/k/v/o, gate/up/down, lm_head) are quantized (int8: one fp16 scale per output row; "
    "fp8: one fp32 scale per matrix). int4 = `huluexport quantize --format qdq` of an fp16 bundle: q/k/v/o, "
    f"gate/up/down and lm_head as int4 with one fp16 scale per {INT4_GROUP} inputs, no zero points; "
    "embed_tokens stays fp16. The vision tower, the projector and all norms/biases stay fp16. "
    "int4 is weight-only (fp16 math); int8 and fp8 use the chip's int8/fp8 tensor cores where it has them, "
    "else fp16 math. KV cache fp16."
)


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


def _matrix_bytes(rows: int, cols: int, precision: str, int4_group: int = INT4_GROUP) -> int:
    n = rows * cols
    if precision in ("fp32", "fp16", "bf16"):
        return int(n * WEIGHT_BYTES[precision])
    if precision == "int8":
        return n + 2 * rows
    if precision == "int4":
        return n // 2 + (n % 2) + 2 * rows * math.ceil(cols / int4_group)
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


def weight_bytes(cfg: HuluConfig, precision: str, int4_group: int = INT4_GROUP) -> WeightBytes:
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
    # int4 (qdq) leaves the embedding table at fp16 (it is a Gather in the embed piece, not a matmul)
    emb = _matrix_bytes(cfg.decoder.vocab, cfg.decoder.hidden, "fp16" if precision == "int4" else precision)
    return WeightBytes(
        precision=precision,
        vision=int(vp * WEIGHT_BYTES[side]),
        projector=int(pp * WEIGHT_BYTES[side]),
        decoder_matrices=emb
        + sum(_matrix_bytes(r, c, precision, int4_group) for n, r, c in mats if n != "embed_tokens"),
        decoder_other=int(other * WEIGHT_BYTES[side]),
        embed_tokens=emb,
        embed_row=math.ceil(emb / cfg.decoder.vocab),
        params={"vision": vp, "projector": pp, "decoder_matrices": mat_params, "decoder_other": other},
    )


# Activations and FLOPs


def model_shape(cfg: HuluConfig) -> ModelShape:
    """The widths of the activation formulas, which live in the runtime (hulurt.schedule) so that the plan and
    the runtime's default vision batch / prefill chunk are the same numbers."""
    v, d = cfg.vision, cfg.decoder
    return ModelShape(v.hidden, v.heads, v.intermediate, v.patch_dim, d.hidden, d.heads, d.kv_heads, d.head_dim,
                      d.intermediate, d.vocab)


def vision_activation_bytes(
    cfg: HuluConfig, vl: VisualLoad, act_bytes: int, fused_attention: bool
) -> dict[str, int]:
    """Peak live bytes of one vision call over the frames of `vl` (hulurt.schedule.vision_activation_bytes)."""
    return schedule.vision_activation_bytes(
        model_shape(cfg), vl.frames, vl.patches_per_frame, vl.tokens, act_bytes, fused_attention
    )


def prefill_activation_bytes(
    cfg: HuluConfig, seq: int, act_bytes: int, fused_attention: bool, past: int = 0
) -> dict[str, int]:
    """Peak live bytes of a decoder call over `seq` tokens after `past` cached ones (KV cache counted
    separately; hulurt.schedule.prefill_activation_bytes)."""
    return schedule.prefill_activation_bytes(model_shape(cfg), seq, act_bytes, fused_attention, past)


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
