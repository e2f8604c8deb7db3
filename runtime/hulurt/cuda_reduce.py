"""ctypes binding of the token-reduction CUDA kernels (kernels/token_reduce): launches them on device arrays of
any framework exposing __cuda_array_interface__ (PyTorch, CuPy, Numba). No CUDA Python package needed.

Library: $HULU_KERNELS_LIB, else kernels/build/libhulu_token_reduce.so of this checkout (`make -C kernels`).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hulurt.errors import ContractError, HuluRuntimeError
from hulurt.reduction import MODES

log = logging.getLogger(__name__)

ENV_VAR = "HULU_KERNELS_LIB"
ABI_VERSION = 1  # HULU_TR_ABI_VERSION in token_reduce.cuh
ALGOS = {"auto": 0, "pair": 2, "stream": 3}  # HULU_TR_ALGO_* (dev.cu versions 2 and 3)
PATCH_DIM = 588  # values of one 14x14x3 patch


class KernelError(HuluRuntimeError):
    """The kernel library is missing or of another ABI version, or a launch failed."""


def default_library_path() -> Path:
    """kernels/build/libhulu_token_reduce.so of the checkout this module lives in."""
    return Path(__file__).resolve().parents[2] / "kernels" / "build" / "libhulu_token_reduce.so"


_LIBS: dict[str, ctypes.CDLL] = {}

_I64 = ctypes.c_int64
_P = ctypes.c_void_p
_SIGNATURES: dict[str, list[Any]] = {
    "hulu_tr_keep_mask": [_P, _I64, _I64, _I64, ctypes.c_float, _I64, ctypes.c_int, ctypes.c_int, _P, _P, _P],
    "hulu_tr_compact": [_P, _I64, _I64, _P, _P, _P, _P],
    "hulu_tr_reduce": [
        _P,
        _I64,
        _I64,
        _I64,
        ctypes.c_float,
        _I64,
        ctypes.c_int,
        ctypes.c_int,
        _P,
        _P,
        _P,
        _P,
        _P,
    ],
    "hulu_tr_gather_rows": [_P, _I64, _I64, _P, _P, _I64, _P, _P],
}


def load_library(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """Load (once per path) and check the kernel library: explicit path, else $HULU_KERNELS_LIB, else the build dir."""
    if path is not None:
        where, source = Path(path), "argument 'path'"
    elif os.environ.get(ENV_VAR):
        where, source = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        where, source = default_library_path(), "the default build location"
    key = str(where)
    if key in _LIBS:
        return _LIBS[key]
    if not where.is_file():
        raise KernelError(
            f"{where} (from {source}): token-reduction kernel library not found; "
            f"build it with `make -C kernels` or point ${ENV_VAR} at libhulu_token_reduce.so"
        )
    try:
        lib = ctypes.CDLL(str(where))
    except OSError as e:
        raise KernelError(f"{where}: cannot load the kernel library: {e}") from e
    lib.hulu_tr_abi_version.restype = ctypes.c_int
    lib.hulu_tr_error_string.restype = ctypes.c_char_p
    lib.hulu_tr_error_string.argtypes = [ctypes.c_int]
    found = int(lib.hulu_tr_abi_version())
    if found != ABI_VERSION:
        raise KernelError(
            f"{where}: kernel library ABI version {found}; this hulurt expects {ABI_VERSION}. "
            "Rebuild it with `make -C kernels` from the same checkout."
        )
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = argtypes
    log.info("loaded token-reduction kernels from %s", where)
    _LIBS[key] = lib
    return lib


@dataclass(frozen=True)
class DeviceArray:
    """What the kernels need of one __cuda_array_interface__ (v2/v3): pointer, shape, element type, stream."""

    name: str
    ptr: int
    shape: tuple[int, ...]
    typestr: str
    stream: int | None

    @property
    def itemsize(self) -> int:
        return int(self.typestr[2:])

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def device_array(obj: Any, name: str, typestrs: tuple[str, ...], *, writable: bool = False) -> DeviceArray:
    """Read `obj.__cuda_array_interface__`; it must be C-contiguous, unmasked, of one of `typestrs`."""
    try:
        iface = obj.__cuda_array_interface__
    except (AttributeError, TypeError, RuntimeError) as e:
        raise ContractError(
            f"{name}: expected a CUDA device array exposing __cuda_array_interface__ (a torch CUDA tensor, a CuPy "
            f"array); got {type(obj).__name__} ({e}). "
            "For bfloat16 tensors pass a 2-byte view (torch: .view(torch.int16))."
        ) from e
    shape = tuple(int(s) for s in iface["shape"])
    typestr = str(iface["typestr"])
    ptr, readonly = iface["data"]
    if typestr not in typestrs:
        raise ContractError(f"{name}: element type {typestr!r}; expected one of {list(typestrs)}")
    if iface.get("mask") is not None:
        raise ContractError(f"{name}: masked CUDA arrays are not supported; pass a plain contiguous array")
    strides = iface.get("strides")
    if strides is not None:
        itemsize = int(typestr[2:])
        want, acc = [], itemsize
        for s in reversed(shape):
            want.append(acc)
            acc *= s
        dims = [i for i, s in enumerate(shape) if s != 1]  # strides of size-1 dims do not matter
        if any(int(strides[i]) != list(reversed(want))[i] for i in dims):
            raise ContractError(
                f"{name}: strides {tuple(strides)} for shape {shape}; expected a C-contiguous array "
                "(torch: .contiguous(); CuPy: cupy.ascontiguousarray)"
            )
    if writable and readonly:
        raise ContractError(f"{name}: the array is read-only; the kernel writes into it")
    if shape and min(shape) > 0 and not ptr:
        raise ContractError(f"{name}: null device pointer for a non-empty array of shape {shape}")
    stream = iface.get("stream")
    return DeviceArray(name, int(ptr or 0), shape, typestr, None if stream is None else int(stream))


_F32 = ("<f4",)
_U8 = ("|u1", "|b1", "<u1", "<b1")
_I64T = ("<i8",)
_ROWS = ("<f4", "<f2", "<i2", "<u2", "<V2", "<i4", "<u4")  # fp32, fp16, bf16 (2-byte views); bits are copied


def _frames_view(px: DeviceArray) -> tuple[int, int, int]:
    """(n_frames, n_tokens, token_dim) of pixels [T, nb, D] or the contract's [T, n_groups, merge_group, 588]."""
    if len(px.shape) == 4:
        t, g, m, p = px.shape
        if p != PATCH_DIM:
            raise ContractError(f"pixel_patches: last dim {p}; the contract says {PATCH_DIM} (14*14*3)")
        return t, g, m * p  # [T, G, M, 588] -> [T, G, M*588]: a view, merged groups are contiguous
    if len(px.shape) == 3:
        t, nb, d = px.shape
        return t, nb, d
    raise ContractError(
        f"pixel_patches: shape {px.shape}; expected [n_frames, n_groups, merge_group, 588] or [T, n_tokens, D]"
    )


def _need(arr: DeviceArray, shape: tuple[int, ...] | None, min_size: int | None = None) -> None:
    if shape is not None and arr.size != _prod(shape):
        raise ContractError(f"{arr.name}: shape {arr.shape}; expected {shape} ({_prod(shape)} elements)")
    if min_size is not None and arr.size < min_size:
        raise ContractError(
            f"{arr.name}: {arr.size} elements (shape {arr.shape}); expected at least {min_size}"
        )


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _stream(stream: int | None, first: DeviceArray) -> int:
    # __cuda_array_interface__ v3 streams: 1 = legacy default, 2 = per-thread default; both are valid handles.
    if stream is not None:
        return int(stream)
    return first.stream or 0


def _check(lib: ctypes.CDLL, fn: str, rc: int) -> None:
    if rc != 0:
        why = lib.hulu_tr_error_string(rc).decode(errors="replace")
        raise KernelError(f"{fn} failed with code {rc}: {why}")


def _mode_flag(mode: str) -> int:
    if mode not in MODES:
        raise ContractError(f"mode {mode!r}; expected one of {MODES}")
    return 1 if mode == "bf16" else 0


def _algo_flag(algo: str) -> int:
    if algo not in ALGOS:
        raise ContractError(f"algo {algo!r}; expected one of {sorted(ALGOS)}")
    return ALGOS[algo]


def _min_tokens(min_tokens: int) -> int:
    if int(min_tokens) != min_tokens or min_tokens < 0:
        raise ContractError(f"min_tokens {min_tokens!r}; expected an integer >= 0")
    return int(min_tokens)


def keep_mask(
    pixels: Any,
    keep: Any,
    *,
    threshold: float = 0.1,
    min_tokens: int = 1,
    mode: str = "bf16",
    counts: Any = None,
    algo: str = "auto",
    stream: int | None = None,
    library: str | os.PathLike[str] | None = None,
) -> None:
    """keep [T, nb] (bool/uint8, written) of pixels (float32 [T, nb, D] or [T, G, M, 588]); counts [T] int64 optional.

    Launched asynchronously on `stream` (default: the pixels array's interface stream, else the legacy default).
    """
    lib = load_library(library)
    px = device_array(pixels, "pixel_patches", _F32)
    t, nb, d = _frames_view(px)
    kp = device_array(keep, "keep_mask", _U8, writable=True)
    _need(kp, (t, nb))
    cp = None
    if counts is not None:
        cp = device_array(counts, "counts", _I64T, writable=True)
        _need(cp, (t,))
    rc = lib.hulu_tr_keep_mask(
        px.ptr,
        t,
        nb,
        d,
        float(threshold),
        _min_tokens(min_tokens),
        _mode_flag(mode),
        _algo_flag(algo),
        kp.ptr,
        cp.ptr if cp else None,
        _stream(stream, px),
    )
    _check(lib, "hulu_tr_keep_mask", rc)


def compact(
    keep: Any,
    indices: Any,
    counts: Any,
    n_kept: Any,
    *,
    stream: int | None = None,
    library: str | os.PathLike[str] | None = None,
) -> None:
    """indices (int64, >= T*nb entries): flat kept rows in token order; counts [T]; n_kept [1]. All written."""
    lib = load_library(library)
    kp = device_array(keep, "keep_mask", _U8)
    if len(kp.shape) != 2:
        raise ContractError(f"keep_mask: shape {kp.shape}; expected [n_frames, n_tokens]")
    t, nb = kp.shape
    ix = device_array(indices, "indices", _I64T, writable=True)
    _need(ix, None, t * nb)
    cp = device_array(counts, "counts", _I64T, writable=True)
    _need(cp, (t,))
    nk = device_array(n_kept, "n_kept", _I64T, writable=True)
    _need(nk, (1,))
    rc = lib.hulu_tr_compact(kp.ptr, t, nb, ix.ptr, cp.ptr, nk.ptr, _stream(stream, kp))
    _check(lib, "hulu_tr_compact", rc)


def reduce(
    pixels: Any,
    keep: Any,
    indices: Any,
    counts: Any,
    n_kept: Any,
    *,
    threshold: float = 0.1,
    min_tokens: int = 1,
    mode: str = "bf16",
    algo: str = "auto",
    stream: int | None = None,
    library: str | os.PathLike[str] | None = None,
) -> None:
    """keep_mask then compact in three launches: keep [T, nb], indices [>= T*nb], counts [T], n_kept [1]."""
    lib = load_library(library)
    px = device_array(pixels, "pixel_patches", _F32)
    t, nb, d = _frames_view(px)
    kp = device_array(keep, "keep_mask", _U8, writable=True)
    _need(kp, (t, nb))
    ix = device_array(indices, "indices", _I64T, writable=True)
    _need(ix, None, t * nb)
    cp = device_array(counts, "counts", _I64T, writable=True)
    _need(cp, (t,))
    nk = device_array(n_kept, "n_kept", _I64T, writable=True)
    _need(nk, (1,))
    rc = lib.hulu_tr_reduce(
        px.ptr,
        t,
        nb,
        d,
        float(threshold),
        _min_tokens(min_tokens),
        _mode_flag(mode),
        _algo_flag(algo),
        kp.ptr,
        ix.ptr,
        cp.ptr,
        nk.ptr,
        _stream(stream, px),
    )
    _check(lib, "hulu_tr_reduce", rc)


def gather_rows(
    features: Any,
    indices: Any,
    n_kept: Any,
    out: Any,
    *,
    stream: int | None = None,
    library: str | os.PathLike[str] | None = None,
) -> None:
    """out[i] = features[indices[i]] for i < n_kept (device scalar); features [N, H] or [T, nb, H], out [cap, H].

    Rows are copied bit for bit: fp32, fp16 and bf16 (as a 2-byte integer view) alike.
    """
    lib = load_library(library)
    fe = device_array(features, "features", _ROWS)
    if len(fe.shape) not in (2, 3):
        raise ContractError(
            f"features: shape {fe.shape}; expected [n_rows, hidden] or [n_frames, n_tokens, hidden]"
        )
    hidden = fe.shape[-1]
    n_src = fe.size // hidden if hidden else 0
    ot = device_array(out, "out", (fe.typestr,), writable=True)
    if len(ot.shape) != 2 or ot.shape[1] != hidden:
        raise ContractError(f"out: shape {ot.shape}; expected [capacity, {hidden}] like the features' rows")
    ix = device_array(indices, "indices", _I64T)
    _need(ix, None, ot.shape[0])
    nk = device_array(n_kept, "n_kept", _I64T)
    _need(nk, (1,))
    rc = lib.hulu_tr_gather_rows(
        fe.ptr, n_src, hidden * fe.itemsize, ix.ptr, nk.ptr, ot.shape[0], ot.ptr, _stream(stream, fe)
    )
    _check(lib, "hulu_tr_gather_rows", rc)
