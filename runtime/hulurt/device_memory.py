"""Free memory of a CUDA device, read with `cudaMemGetInfo` from the CUDA runtime library through ctypes (no
CUDA Python package). hulurt.generate budgets its default vision batches and prefill chunks against it when the
piece runs on a GPU, where the activations live (docs/inputs.md, "Vision batches and prefill chunks").

The library is found by soname, one the process has loaded already first (onnxruntime's CUDA provider loads its
CUDA runtime), so no path is needed. The calling thread's current device is restored after the query, and an
error it returns is cleared.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any

from hulurt.capture_gate import GATE

log = logging.getLogger(__name__)

SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")  # onnxruntime-gpu 1.31 builds for CUDA 13 or 12
_lib: Any = None  # the CUDA runtime once one has loaded (a failure is not kept: the next query tries again)
_lib_lock = threading.Lock()


def _cudart() -> Any:
    """The CUDA runtime library: one the process has loaded already (RTLD_NOLOAD: onnxruntime's own), else the
    first of SONAMES that loads; None where none does."""
    global _lib
    with _lib_lock:
        if _lib is None:
            for mode in (getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LOCAL, os.RTLD_LOCAL):
                for name in SONAMES:
                    try:
                        lib = ctypes.CDLL(name, mode=mode)
                    except OSError:
                        continue
                    lib.cudaMemGetInfo.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
                    lib.cudaGetDevice.argtypes = [ctypes.POINTER(ctypes.c_int)]
                    lib.cudaSetDevice.argtypes = [ctypes.c_int]
                    lib.cudaGetLastError.argtypes = []
                    for fn in (lib.cudaMemGetInfo, lib.cudaGetDevice, lib.cudaSetDevice, lib.cudaGetLastError):
                        fn.restype = ctypes.c_int
                    _lib = lib
                    return _lib
        return _lib


def memory(device_id: int = 0) -> tuple[int, int] | None:
    """(free, total) bytes of CUDA device `device_id`; None where no CUDA runtime loads or it reports an error
    (no device, no driver: logged at debug level; the error is cleared, so that onnxruntime's next
    cudaGetLastError on this thread does not see it)."""
    current = ctypes.c_int(-1)
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    with GATE.shared():  # not while another thread captures a CUDA graph (hulurt.capture_gate)
        lib = _cudart()
        if lib is None:
            return None
        rc = lib.cudaGetDevice(ctypes.byref(current))
        if rc == 0:
            try:
                rc = lib.cudaSetDevice(device_id) if current.value != device_id else 0
                if rc == 0:
                    rc = lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
            finally:
                if current.value != device_id:
                    lib.cudaSetDevice(current.value)
        if rc != 0:
            lib.cudaGetLastError()  # reset the thread's last error
            log.debug("CUDA runtime query of device %d: CUDA error %d (no usable device?)", device_id, rc)
            return None
    return int(free.value), int(total.value)


def free_bytes(device_id: int = 0) -> int | None:
    """Free bytes of CUDA device `device_id` (memory(...)[0]), or None where unknown."""
    got = memory(device_id)
    return None if got is None else got[0]
