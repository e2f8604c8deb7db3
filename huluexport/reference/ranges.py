"""How large the fp32 reference's activations get, where an fp16 graph stores them.

A Hulu-Med checkpoint is bf16: its activations were never bound by fp16's largest finite value, 65504. The fp16
pieces keep norms, softmax and RoPE in fp32 (docs/model.md), but every matmul's input and output and the residual
stream between layers are stored in fp16, and a value past 65504 there becomes inf, then NaN logits. Large
"outlier" activations are common in trained decoders (a few channels of the residual stream, at the first
tokens), so whether a given checkpoint fits fp16 is a property of its weights that only they can answer.

`RangeRecorder` hooks the reference while `huluexport verify` runs its prompts: the largest |value| of every
nn.Linear's input and output, of every vision/decoder layer's output (the residual stream) and of the unscaled
attention scores q.k^T, which the vision and v1 decoder graphs hold in fp16 before the fp32 softmax (the
gqa-static form's GroupQueryAttention keeps them inside its kernel, whose flash path accumulates in fp32, so they
do not count for decoder_gqa). onnxruntime's CPU provider widens fp16 MatMuls to fp32 (its inserted Casts), so
an overflow at a matmul may not show in verify's CPU rows: the GPU providers and TensorRT compute them in fp16.
`verify` reports the peak and its place with the headroom below 65504, fails an fp16 bundle whose reference
passes 65504, and warns under HEADROOM_WARN (verify's prompts are random ids and test images; a real prompt can
reach further).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from huluexport.reference.decoder import Attention, DecoderLayer
from huluexport.reference.vision import VisionAttention, VisionLayer

FP16_MAX = 65504.0  # the largest finite float16
HEADROOM_WARN = 4.0  # below this factor verify warns: its random prompts may not reach a real prompt's peak


QK = "q.k scores"  # the suffix of an attention-score place


@dataclass(frozen=True)
class Peak:
    piece: str  # "vision" (vision encoder + projector), "decoder" (v1) or "decoder_gqa"
    where: str  # module name and "input", "output" or QK (an attention module's unscaled scores)
    value: float  # the largest |value| seen there

    @property
    def headroom(self) -> float:
        """FP16_MAX / value: how far below the fp16 limit the peak stays (< 1, or 0 for NaN: it overflows)."""
        if self.value != self.value:
            return 0.0
        return FP16_MAX / self.value if self.value > 0 else float("inf")

    @property
    def overflows_fp16(self) -> bool:
        return not self.value <= FP16_MAX


def holds(piece: str, where: str) -> bool:
    """Whether the graphs of `piece` store the value at `where` (a place name of RangeRecorder.seen)."""
    if not where.startswith("decoder."):
        return piece == "vision"
    return piece == "decoder" or (piece == "decoder_gqa" and not where.endswith(QK))


class RangeRecorder:
    """with RangeRecorder(model) as rec: ... run the model ...; rec.peaks(pieces) -> the largest Peak of each."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.seen: dict[str, float] = {}
        self._handles: list[Any] = []
        self._observed: list[nn.Module] = []

    def __enter__(self) -> RangeRecorder:
        for name, mod in self.model.named_modules():
            if isinstance(mod, nn.Linear):
                self._handles.append(mod.register_forward_hook(self._hook(name, inputs=True)))
            elif isinstance(mod, (DecoderLayer, VisionLayer)):
                self._handles.append(mod.register_forward_hook(self._hook(name, inputs=False)))
            elif isinstance(mod, (Attention, VisionAttention)):
                mod.observe_qk = self._observer(f"{name} {QK}")
                self._observed.append(mod)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mod in self._observed:
            del mod.observe_qk  # back to the class's None
        self._observed.clear()

    def _observer(self, where: str):  # noqa: ANN202
        return lambda t: self._note(where, t)

    def _hook(self, name: str, inputs: bool):  # noqa: ANN202 -- torch's hook signature
        def record(_mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if inputs and args and isinstance(args[0], torch.Tensor):
                self._note(f"{name} input", args[0])
            self._note(f"{name} output", out[0] if isinstance(out, tuple) else out)

        return record

    def _note(self, where: str, t: torch.Tensor) -> None:
        if t.numel():
            v = float(t.detach().abs().max())
            if v > self.seen.get(where, -1.0) or v != v:  # NaN is kept: it is the worst there is
                self.seen[where] = v

    def peaks(self, pieces: Iterable[str]) -> dict[str, Peak]:
        """The largest value each of `pieces` ("vision", "decoder", "decoder_gqa") stores, and where."""
        out: dict[str, Peak] = {}
        for piece in pieces:
            for where, v in self.seen.items():
                if holds(piece, where) and (piece not in out or not v <= out[piece].value):
                    out[piece] = Peak(piece, where, v)
        return out
