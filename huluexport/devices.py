"""The one device registry: every name `build --target`, `plan --target` and `bench --target` accept.

A row (`Target`) holds what the exporter needs (the dynamic dim ranges of the bundle: runtime limits and
TensorRT profiles, from `hulurt.contract.dim_ranges`, and the default precision) and what the planner needs
(the device's memory, bandwidth and peak compute, each figure with its public source). Targets without a fixed
device (`cpu`, `generic`, `tiny`) are planned against this host, with its bandwidth measured.
Data and lookups only: no cost model here (huluexport/plan/).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from hulurt.contract import DimRange, dim_ranges

from huluexport.errors import ConfigError

GiB = 1024**3

# --------------------------------------------------------------------------------------------------
# Hardware profiles. Every figure names its public source; `estimates` lists figures derived or guessed.
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
    measured: bool = False  # figures measured on this host at run time (targets without a fixed device)

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

HARDWARE: dict[str, DeviceProfile] = {
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


def host_profile(bandwidth_bytes_s: float | None = None, key: str = "cpu") -> DeviceProfile:
    """This machine as a device (targets `cpu`, `generic`, `tiny`): its memory and measured bandwidth;
    compute peak is an estimate."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    bw = probe_memory_bandwidth() if bandwidth_bytes_s is None else bandwidth_bytes_s
    cores = os.cpu_count() or 1
    fp32 = cores * 2.5e9 * 32  # 2 FMA units x 8 fp32 lanes (AVX2) x 2 FLOP at ~2.5 GHz
    return DeviceProfile(
        key=key,
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
            "workspace_bytes": "estimate: the Python process around the graphs (interpreter, numpy, onnxruntime, "
            "readers, tokenizer; 80 MB RSS measured with the byte tokenizer of the benchmarks); the graphs' "
            "activations are planned apart",
        },
        estimates=("peak_ops", "usable_fraction", "workspace_bytes"),
        measured=True,
    )


# --------------------------------------------------------------------------------------------------
# The registry: build ranges + hardware, one row per name
# --------------------------------------------------------------------------------------------------


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
    hardware: DeviceProfile | None = None  # None: no fixed device, planned against this host

    def ranges(self, model_max_position: int | None = None) -> dict[str, DimRange]:
        ctx = self.max_context if model_max_position is None else min(self.max_context, model_max_position)
        return dim_ranges(
            max_context=ctx,
            max_frames=self.max_frames,
            max_groups=self.max_groups,
            opt_context=self.opt_context,
            opt_groups=self.opt_groups,
        )


# Ranges: the processor's full budget (16384 merged tokens per request, docs of hulurt.preprocess) where the
# device's memory holds a 7B fp16 bundle with that context; shorter contexts, smaller frames on the Jetsons.
_FULL = {"max_context": 32768, "max_frames": 256, "max_groups": 16384}
TARGETS: dict[str, Target] = {
    "generic": Target(
        "generic",
        **_FULL,
        precision="fp16",
        description="any ONNX Runtime / TensorRT host; the processor's full budget",
    ),
    "cpu": Target(
        "cpu",
        **_FULL,
        precision="fp32",
        description="this host's CPU (onnxruntime CPU provider); planned with its measured bandwidth",
    ),
    "h100": Target(
        "h100",
        **_FULL,
        opt_context=2048,
        opt_groups=1024,
        description="data-centre GPU, full context",
        hardware=HARDWARE["h100"],
    ),
    "h200": Target(
        "h200",
        **_FULL,
        opt_context=2048,
        opt_groups=1024,
        description="data-centre GPU, full context",
        hardware=HARDWARE["h200"],
    ),
    "rtx-4090": Target(
        "rtx-4090",
        **_FULL,
        opt_context=2048,
        opt_groups=1024,
        description="24 GB workstation GPU: 7B fp16 weights (16.1 GB) + 32k context KV (1.8 GB) fit",
        hardware=HARDWARE["rtx-4090"],
    ),
    "thor": Target(
        "thor",
        16384,
        256,
        16384,
        opt_context=2048,
        opt_groups=1024,
        description="Jetson Thor",
        hardware=HARDWARE["thor"],
    ),
    "orin-agx": Target(
        "orin-agx",
        8192,
        128,
        4096,
        opt_context=1024,
        description="Jetson AGX Orin (32/64 GB)",
        hardware=HARDWARE["orin-agx"],
    ),
    "orin-nx": Target(
        "orin-nx",
        8192,
        128,
        4096,
        opt_context=1024,
        description="Jetson Orin NX 16 GB: the AGX Orin's ranges (same GPU generation, int4 7B fits)",
        hardware=HARDWARE["orin-nx"],
    ),
    "orin-nano": Target(
        "orin-nano",
        4096,
        64,
        1024,
        opt_context=512,
        opt_groups=256,
        description="Jetson Orin Nano 8 GB: short context, small images",
        hardware=HARDWARE["orin-nano"],
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
NAMES = tuple(TARGETS)


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(
            f"--target {name!r} is not a known target; expected one of {', '.join(NAMES)}"
        ) from None


def device(target: str, *, bandwidth_bytes_s: float | None = None) -> DeviceProfile:
    """The hardware behind a target name; this host (bandwidth measured unless given) when it has none."""
    hw = get_target(target).hardware
    return host_profile(bandwidth_bytes_s, key=target) if hw is None else hw
