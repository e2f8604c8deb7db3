"""Free memory of a CUDA device, read with `cudaMemGetInfo` from the CUDA runtime library through ctypes (no
CUDA Python package). hulurt.generate budgets its default vision batches and prefill chunks against it when the
piece runs on a GPU, where the activations live (docs/inputs.md, "Vision batches and prefill chunks").

The library is found by soname. Once onnxruntime's CUDA provider has loaded its CUDA runtime, the dynamic loader
returns that same library for the name, so no path is needed. The calling thread's current device is restored
after the query.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from hulurt.capture_gate import GATE

log = logging.getLogger(__name__)

SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")  # onnxruntime-gpu 1.31 builds for CUDA 13 or 12
_lib: Any = None  # the loaded library, or False once no soname could be loaded


def _cudart() -> Any:
    global _lib
    if _lib is None:
        _lib = False
        for name in SONAMES:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            lib.cudaMemGetInfo.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
            lib.cudaGetDevice.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.cudaSetDevice.argtypes = [ctypes.c_int]
            for fn in (lib.cudaMemGetInfo, lib.cudaGetDevice, lib.cudaSetDevice):
                fn.restype = ctypes.c_int
            _lib = lib
            break
    return _lib or None


def memory(device_id: int = 0) -> tuple[int, int] | None:
    """(free, total) bytes of CUDA device `device_id`; None where no CUDA runtime loads or it reports an error
    (no device, no driver: logged at debug level)."""
    current = ctypes.c_int(-1)
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    with GATE.shared():  # not while another thread captures a CUDA graph (hulurt.capture_gate)
        lib = _cudart()
        if lib is None:
            return None
        if lib.cudaGetDevice(ctypes.byref(current)) != 0:
            log.debug("cudaGetDevice failed: no CUDA device usable from this process")
            return None
        try:
            rc = lib.cudaSetDevice(device_id) if current.value != device_id else 0
            if rc == 0:
                rc = lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
        finally:
            if current.value != device_id:
                lib.cudaSetDevice(current.value)
    if rc != 0:
        log.debug("cudaMemGetInfo on device %d: CUDA error %d", device_id, rc)
        return None
    return int(free.value), int(total.value)


def free_bytes(device_id: int = 0) -> int | None:
    """Free bytes of CUDA device `device_id` (memory(...)[0]), or None where unknown."""
    got = memory(device_id)
    return None if got is None else got[0]
