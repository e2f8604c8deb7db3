"""Per-device build targets: dynamic dim ranges (TensorRT profiles, runtime limits) and precision defaults.

A target is a row in TARGETS; the ranges of every named dim come from `hulurt.contract.dim_ranges`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hulurt.contract import DimRange, dim_ranges

from huluexport.errors import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    max_context: int  # prompt + generated tokens (total_len)
    max_frames: int  # frames per vision call
    max_groups: int  # merged tokens per frame (m=1: patches per image)
    opt_context: int = 1024
    opt_groups: int = 256
    precision: str = "fp16"
    description: str = ""

    def ranges(self, model_max_position: int | None = None) -> dict[str, DimRange]:
        ctx = self.max_context if model_max_position is None else min(self.max_context, model_max_position)
        return dim_ranges(
            max_context=ctx,
            max_frames=self.max_frames,
            max_groups=self.max_groups,
            opt_context=self.opt_context,
            opt_groups=self.opt_groups,
        )


TARGETS: dict[str, Target] = {
    "generic": Target(
        "generic",
        32768,
        256,
        16384,
        precision="fp16",
        description="any ONNX Runtime / TensorRT host; the processor's full budget (ARCH 3.3)",
    ),
    "h100": Target(
        "h100",
        32768,
        256,
        16384,
        opt_context=2048,
        opt_groups=1024,
        precision="fp16",
        description="data-centre GPU, full context",
    ),
    "thor": Target(
        "thor",
        16384,
        256,
        16384,
        opt_context=2048,
        opt_groups=1024,
        precision="fp16",
        description="Jetson Thor",
    ),
    "orin-agx": Target(
        "orin-agx",
        8192,
        128,
        4096,
        opt_context=1024,
        precision="fp16",
        description="Jetson AGX Orin (32/64 GB)",
    ),
    "orin-nano": Target(
        "orin-nano",
        4096,
        64,
        1024,
        opt_context=512,
        opt_groups=256,
        precision="fp16",
        description="Jetson Orin Nano 8 GB: short context, small images",
    ),
    "tiny": Target(
        "tiny",
        512,
        16,
        256,
        opt_context=64,
        opt_groups=64,
        precision="fp32",
        description="tests: small ranges so TensorRT profiles build fast",
    ),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}") from None
