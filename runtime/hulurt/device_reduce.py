"""The token-reduction keep mask on the GPU for the CUDA request path: the merged-token pixels go to the device
once (an onnxruntime CUDA OrtValue) and `kernels/token_reduce` computes the mask there through hulurt.cuda_reduce;
only the [n_frames, n_groups] mask comes back. Exact: the kernels equal the numpy oracle bit for bit
(tests/gpu/test_token_reduce_gpu.py), so prompts, kept rows and answers do not change.

`device_reducer(device_id)` returns a callable with hulurt.reduction.keep_mask's signature, or None (logged)
when the kernel library or the CUDA provider is missing, in which case the numpy path runs as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.capture_gate import GATE
from hulurt.errors import HuluRuntimeError

log = logging.getLogger(__name__)

KeepMaskFn = Callable[[NDArray[np.float32], float, int, str], NDArray[np.bool_]]


class _CudaView:
    """__cuda_array_interface__ (v3) of a C-contiguous onnxruntime CUDA OrtValue, for hulurt.cuda_reduce."""

    def __init__(self, value: Any, typestr: str) -> None:
        self._value = value  # keeps the device memory alive
        self.__cuda_array_interface__ = {
            "shape": tuple(int(s) for s in value.shape()),
            "typestr": typestr,
            "data": (int(value.data_ptr()), False),
            "strides": None,
            "version": 3,
        }


def device_reducer(device_id: int = 0, library: str | None = None) -> KeepMaskFn | None:
    """A keep-mask function that runs on CUDA device `device_id`, or None where it cannot."""
    try:
        import onnxruntime as ort

        from hulurt import cuda_reduce

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise HuluRuntimeError("onnxruntime has no CUDAExecutionProvider")
        cuda_reduce.load_library(library)
    except (ImportError, HuluRuntimeError) as exc:
        log.info("token reduction on the host (numpy): %s", exc)
        return None

    def keep_mask(tokens: NDArray[np.float32], threshold: float, min_tokens: int, mode: str) -> NDArray[np.bool_]:
        """tokens [T, nb, D] float32 (host) -> keep [T, nb] bool, computed on the device. It runs while other
        threads may decode: never during a CUDA graph capture (hulurt.capture_gate)."""
        with GATE.shared():
            px = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(tokens, dtype=np.float32), "cuda", device_id)
            keep = ort.OrtValue.ortvalue_from_shape_and_type(list(tokens.shape[:2]), np.bool_, "cuda", device_id)
            cuda_reduce.keep_mask(_CudaView(px, "<f4"), _CudaView(keep, "|b1"), threshold=threshold,
                                  min_tokens=min_tokens, mode=mode, library=library)
            out = np.asarray(keep.numpy(), dtype=bool)  # the copy back waits for the kernel (default stream)
            del px, keep  # freed (to onnxruntime's arena) inside the gate too
        return out

    return keep_mask
