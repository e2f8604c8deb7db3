"""The Session protocol every backend implements, the backend options, and `open_session`, which imports
the chosen backend lazily (onnxruntime or TensorRT are optional extras; numpy is all hulurt needs here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from hulurt import checks
from hulurt.errors import HuluRuntimeError

log = logging.getLogger(__name__)

# user-facing provider names -> what they mean; "auto" picks the first available of GPU_PREFERENCE, else cpu
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "trt-native")
GPU_PREFERENCE = ("tensorrt", "cuda")


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


@dataclass(frozen=True)
class BackendOptions:
    """How to open sessions. threads=0 lets the engine choose (all physical cores for onnxruntime)."""

    provider: str = "auto"
    threads: int = 0
    device_id: int = 0
    trt_cache_dir: str | None = None  # TensorRT execution provider engine cache (built on first use)
    cuda_graph: bool = False  # CUDA EP: enable_cuda_graph (hulurt.static_decode captures the decode step)

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise BackendError(f"provider {self.provider!r} is unknown; expected one of {', '.join(PROVIDERS)}")
        reason = checks.threads(self.threads)  # the command line's --threads check (hulurt.options)
        if reason is not None:
            raise BackendError(f"threads {reason}")


def open_session(path: Path | str, options: BackendOptions = BackendOptions()) -> Session:
    """Open one graph file with the backend `options.provider` names (imported here, not at hulurt import)."""
    p = Path(path)
    if options.provider == "trt-native":
        from hulurt.backends import tensorrt

        return tensorrt.TensorRTSession(p, options)
    from hulurt.backends import ort

    return ort.OrtSession(p, options)
