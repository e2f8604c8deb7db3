"""The Session protocols every backend implements and the backend options. numpy only: the backends
themselves (onnxruntime, TensorRT: optional extras) are opened by `hulurt.backends.open_session`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from hulurt import checks
from hulurt.errors import HuluRuntimeError

log = logging.getLogger(__name__)

# user-facing provider names -> what they mean; "auto" picks the first available of GPU_PREFERENCE, else cpu.
# CUDA first: the gqa-static decode path (KV written in place, CUDA graph; docs/gpu.md) is built for the CUDA EP,
# and onnxruntime-gpu lists the TensorRT EP even where no TensorRT library is installed; TensorRT when asked.
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "trt-native")
GPU_PREFERENCE = ("cuda", "tensorrt")


class BackendError(HuluRuntimeError):
    """A backend that is not installed, cannot open a file, or was asked for something it cannot do."""


@runtime_checkable
class Session(Protocol):
    """One loaded graph. `run` takes numpy feeds by input name and returns numpy outputs by output name."""

    path: Path
    provider: str

    def input_names(self) -> list[str]: ...

    def output_names(self) -> list[str]: ...

    def run(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]: ...


@runtime_checkable
class DeviceSession(Session, Protocol):
    """A session whose tensors can stay on an accelerator between calls (IO binding). The generation loop
    keeps the KV cache on the device through it when `on_device` is true."""

    @property
    def on_device(self) -> bool: ...

    @property
    def device_id(self) -> int:
        """The CUDA device the session runs on (meaningful when on_device)."""
        ...

    def run_bound(
        self, feeds: dict[str, Any], device_outputs: tuple[str, ...]
    ) -> tuple[dict[str, NDArray[np.generic]], dict[str, Any]]:
        """Outputs named in `device_outputs` stay on the device (returned as the engine's own values); the
        others come back as host numpy arrays."""
        ...

    def empty_device(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        """A device tensor of this shape (the zero-length past of a prefill)."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    """How to open sessions. threads=0 lets the engine choose (all physical cores for onnxruntime)."""

    provider: str = "auto"
    threads: int = 0
    device_id: int = 0
    # onnxruntime TensorRT EP: engine + timing caches in this directory, profiles from the manifest (backends/ort.py)
    trt_cache_dir: str | None = None
    engines_dir: str | None = None  # trt-native: engine directory (default: BUNDLE/engines/ matching this TensorRT)
    cuda_graph: bool = False  # CUDA EP: enable_cuda_graph (hulurt.static_decode captures the decode step)
    # hand the memory of a call's activations back after every call (onnxruntime: arena shrinkage), so the next
    # piece can use it; for pieces called a few times with big activations (the vision graph's frame batches)
    release_after_run: bool = False

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise BackendError(f"provider {self.provider!r} is unknown; expected one of {', '.join(PROVIDERS)}")
        reason = checks.threads(self.threads)  # the command line's --threads check (hulurt.options)
        if reason is not None:
            raise BackendError(f"threads {reason}")
