"""Native TensorRT backend (`--provider trt-native`): the bundle's engines (python -m hulurt.engines) through
TensorRT's Python API, device memory through cuda-python.

STATUS, honestly: this path has NOT run on a GPU in this project (no GPU with TensorRT in its CI). What runs
without a GPU is tested (tests/runtime/test_engines_meta.py, tests/export/test_engines.py): finding the engine
directory, refusing engines of another TensorRT version or GPU and modified engine files (engines.json, before
anything is deserialised), profile selection, buffer sizes. Everything below `_import_cudart` is written against
the documented APIs and is exercised only on a GPU machine.

Design: one execution context per engine and one CUDA stream. Every input and output gets device memory once,
at the engine profile's maximum shape (no allocation per call); outputs get two buffers each, so an output fed
back as the next call's input (the KV cache: present.* -> past_key_values.*) is read from one buffer while the
new one is written into the other. `run_bound` keeps the outputs it is asked to keep on the device
(`DeviceTensor`, the same role as onnxruntime's OrtValue in the "device" KV strategy of hulurt/kv_cache.py);
only the logits come back to the host each step (sampling runs on the host). `device_rows` runs the vision
engine and gathers the kept rows into the embed engine's `visual_embeds` buffer with device-to-device copies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.backends.base import BackendError, BackendOptions
from hulurt.engines import meta as em
from hulurt.engines.profiles import Profile, select_profile

log = logging.getLogger(__name__)


def _import_trt() -> Any:
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return __import__(name)
        except ImportError:
            continue
    raise BackendError(
        "the native TensorRT backend needs the `tensorrt` Python package (JetPack ships it; on x86 install "
        "TensorRT, or tensorrt-rtx on RTX GPUs) and cuda-python; neither is a pip dependency of hulurt. Use "
        "--provider tensorrt (onnxruntime TensorRT EP) or --provider cpu instead"
    )


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]  # older cuda-python layout
        except ImportError as exc:
            raise BackendError(
                "the native TensorRT backend needs cuda-python for device memory (pip install cuda-python)"
            ) from exc
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA runtime call failed with error {err}")
    return rest[0] if len(rest) == 1 else (rest or None)


def engine_for(onnx_path: Path, trt: Any, options: BackendOptions, device_cc: str | None) -> tuple[em.EngineMeta, str]:
    """The checked engines.json for the piece `onnx_path` names (BUNDLE/decoder.onnx -> "decoder"): the
    directory in options.engines_dir, else the one under BUNDLE/engines/ built with this TensorRT for this GPU.
    Every refusal is one EngineError line naming the file; nothing is deserialised here."""
    from hulurt.engines.build import find_engines
    from hulurt.engines.device import Gpu, rtx_runs_on

    piece = onnx_path.stem
    module, version = trt.__name__, trt.__version__
    if module == "tensorrt_rtx" and device_cc is not None:
        rtx_runs_on(trt, device_cc)
    if options.engines_dir:
        root = Path(options.engines_dir)
    else:
        gpu = Gpu("this GPU", device_cc) if device_cc else None
        root = find_engines(onnx_path.parent, module, version, gpu)
    meta = em.read(root)
    sha = em.sha256_file(onnx_path) if onnx_path.is_file() else None
    em.check(meta, module=module, version=version, device_cc=device_cc, pieces=(piece,),
             onnx_sha256={piece: sha} if sha else None)
    for plugin in meta.builder.get("plugins", []):
        # load_library only logs a missing file and returns None (as it does for a library already loaded), and
        # the engine then fails to deserialise without naming the plugin
        if not Path(plugin["path"]).is_file():
            raise em.EngineError(
                f"{meta.path}: plugin library {plugin['path']} (the engines were built with it) is not on this "
                "machine; build it here (`make -C kernels`) and rebuild the engines with --plugin"
            )
    return meta, piece


def np_dtype(trt: Any, dtype: Any, name: str, where: str) -> np.dtype[Any]:
    """numpy dtype of an engine tensor; BackendError naming it for the TensorRT types numpy lacks (BF16, FP8,
    FP4, INT4: trt.nptype raises a bare TypeError for them)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise BackendError(
            f"{where}: tensor {name!r} is {dtype.name}, which has no numpy type; this backend feeds and reads "
            "numpy (rebuild the engines from an fp16 or fp32 bundle)"
        ) from None


def buffer_plan(profile: Profile, output_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype[Any]],
                where: str = "engine") -> dict[str, int]:
    """Bytes to allocate per tensor: the profile's maximum input shapes and the outputs' shapes at that point.
    An output whose shape TensorRT cannot infer from the input shapes (a -1 dim: a data-dependent shape, which
    needs an output allocator this backend does not have) is refused naming it."""
    out = {}
    for name, (_lo, _opt, hi) in profile.items():
        out[name] = max(1, int(np.prod(hi, dtype=np.int64)) * dtypes[name].itemsize)
    for name, shape in output_shapes.items():
        if any(int(d) < 0 for d in shape):
            raise BackendError(
                f"{where}: output {name!r} has shape {tuple(shape)} at the profile maximum: a data-dependent shape, "
                "which the native backend does not support"
            )
        out[name] = max(1, int(np.prod(shape, dtype=np.int64)) * dtypes[name].itemsize)
    return out


def row_copies(keep: NDArray[np.bool_], row_bytes: int, dst_row: int, capacity: int, where: str
               ) -> list[tuple[int, int, int]]:
    """The device-to-device copies that gather the kept rows of one vision output (`keep`, flat, one entry per
    row) after `dst_row` rows already gathered: (dst offset, src offset, bytes) per run of consecutive kept rows.
    BackendError when the rows would run past `capacity` bytes (the embed engine's visual_embeds buffer, sized
    at its profile's maximum n_visual)."""
    flat = np.asarray(keep, dtype=bool).reshape(-1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flat.view(np.int8), [0]))))
    total = dst_row + int(flat.sum())
    if total * row_bytes > capacity:
        raise BackendError(
            f"{where}: {total} visual rows do not fit the embed engine's visual_embeds buffer of "
            f"{capacity // max(1, row_bytes)} rows (its profile's maximum n_visual); rebuild the engines for a "
            "larger --max-context"
        )
    out = []
    row = dst_row
    for start, stop in zip(edges[::2], edges[1::2]):
        n = int(stop - start)
        out.append((row * row_bytes, int(start) * row_bytes, n * row_bytes))
        row += n
    return out


@dataclass
class DeviceTensor:
    """A tensor in device memory owned by a TensorRTSession (valid until that output slot is written again)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class TensorRTSession:
    """Session protocol (+ run_bound / empty_device / device_rows) over one deserialised engine."""

    provider = "trt-native"
    on_device = True
    device_type = "cuda"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        from hulurt.engines.device import query_gpu

        trt = _import_trt()
        self.device_id = options.device_id
        gpu = query_gpu(options.device_id)
        self.meta, self.piece = engine_for(Path(path), trt, options, gpu.compute_capability if gpu else None)
        self.path = self.meta.engine_path(self.piece)
        self._profiles = self.meta.engines[self.piece].profiles
        cudart = self._cudart = _import_cudart()
        self._trt = trt
        _check(cudart.cudaSetDevice(options.device_id))
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        for plugin in self.meta.builder.get("plugins", []):
            runtime.get_plugin_registry().load_library(str(plugin["path"]))
        self._engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{self.path}: TensorRT could not deserialise this engine (see its log above)")
        self._ctx = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_in[n]]
        self._outputs = [n for n in names if not is_in[n]]
        self._dtype = {n: np_dtype(trt, self._engine.get_tensor_dtype(n), n, str(self.path)) for n in names}
        self._stream = _check(cudart.cudaStreamCreate())
        # shapes at the profile maximum -> the outputs' largest shapes -> one allocation per tensor (two per output)
        for name, (_lo, _opt, hi) in self._profiles[0].items():
            self._set_shape(name, hi)
        max_out = {n: tuple(self._ctx.get_tensor_shape(n)) for n in self._outputs}
        sizes = buffer_plan(self._profiles[0], max_out, self._dtype, str(self.path))
        self._in_bytes = {n: sizes[n] for n in self._inputs}
        self._in_buf = {n: _check(cudart.cudaMalloc(sizes[n])) for n in self._inputs}
        self._out_buf = {n: [_check(cudart.cudaMalloc(sizes[n])) for _ in range(2)] for n in self._outputs}
        self._scratch: Any = _check(cudart.cudaMalloc(256))
        log.info("trt-native: %s, %.1f MB of buffers", self.path, sum(sizes.values()) / 1e6
                 + sum(sizes[n] for n in self._outputs) / 1e6)

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        # set_input_shape returns False (TensorRT logs why) for a name that is not an input or a shape outside the
        # profile; going on would run with the previous shape
        if not self._ctx.set_input_shape(name, tuple(int(d) for d in shape)):
            raise BackendError(f"{self.path}: TensorRT refused shape {tuple(shape)} for input {name!r} (log above)")

    # ---- Session protocol ------------------------------------------------------------------------

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, Any]) -> dict[str, NDArray[np.generic]]:
        host, _ = self.run_bound(feeds, ())
        return host

    def empty_device(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> DeviceTensor:
        """A zero-length device tensor (the prefill's past): any valid address, nothing is read from it."""
        return DeviceTensor(int(self._scratch), tuple(shape), np.dtype(dtype))

    # ---- device-resident calls -----------------------------------------------------------------

    def _memcpy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        k = getattr(self._cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
        if nbytes:
            _check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, k, self._stream))

    def run_bound(self, feeds: dict[str, Any], device_outputs: tuple[str, ...]
                  ) -> tuple[dict[str, NDArray[np.generic]], dict[str, DeviceTensor]]:
        """Run once. Feeds are numpy (copied into the input's buffer) or DeviceTensors (bound where they lie).
        Outputs in `device_outputs` stay on the device, the others are copied to host numpy."""
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        select_profile(self._profiles, shapes, where=str(self.path))
        bound: set[int] = set()
        keep: list[Any] = []  # host arrays must live until the stream is synchronised
        for name in self._inputs:
            if name not in feeds:
                raise BackendError(f"{self.path}: input {name!r} was not fed")
            value = feeds[name]
            if isinstance(value, DeviceTensor):
                ptr = value.ptr
            else:
                host = np.ascontiguousarray(value, dtype=self._dtype[name])
                keep.append(host)
                ptr = int(self._in_buf[name])
                self._memcpy(ptr, host.ctypes.data, host.nbytes, "HostToDevice")
            bound.add(int(ptr))
            self._set_shape(name, shapes[name])
            self._ctx.set_tensor_address(name, int(ptr))
        out_ptr: dict[str, int] = {}
        for name in self._outputs:
            slots = self._out_buf[name]
            ptr = int(slots[0]) if int(slots[0]) not in bound else int(slots[1])  # never write what is read
            out_ptr[name] = ptr
            self._ctx.set_tensor_address(name, ptr)
        if not self._ctx.execute_async_v3(int(self._stream)):
            raise BackendError(f"{self.path}: TensorRT execution failed")
        host_out: dict[str, NDArray[np.generic]] = {}
        dev_out: dict[str, DeviceTensor] = {}
        for name in self._outputs:
            shape = tuple(self._ctx.get_tensor_shape(name))
            if name in device_outputs:
                dev_out[name] = DeviceTensor(out_ptr[name], shape, self._dtype[name])
            else:
                arr = np.empty(shape, dtype=self._dtype[name])
                self._memcpy(arr.ctypes.data, out_ptr[name], arr.nbytes, "DeviceToHost")
                host_out[name] = arr
        _check(self._cudart.cudaStreamSynchronize(self._stream))
        return host_out, dev_out

    def device_rows(self, calls: list[tuple[dict[str, Any], NDArray[np.bool_] | None]], into: TensorRTSession,
                    input_name: str = "visual_embeds") -> DeviceTensor:
        """Vision engine once per (feeds, keep mask); the kept rows of every call, in order, copied device to
        device into `into`'s `input_name` buffer: -> DeviceTensor [n_kept, hidden] for the embed engine."""
        dst = int(into._in_buf[input_name])
        capacity, want = into._in_bytes[input_name], into._dtype[input_name]
        rows, hidden, dtype = 0, 0, want
        for feeds, keep in calls:
            _, dev = self.run_bound(feeds, ("visual_embeds",))
            out = dev["visual_embeds"]  # [n_frames, n_groups, hidden]
            hidden, dtype = out.shape[-1], out.dtype
            if dtype != want:
                raise BackendError(f"{self.path}: visual_embeds is {dtype}, the embed engine's {input_name} is {want}")
            n = out.shape[0] * out.shape[1]
            flat = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool).reshape(-1)
            if flat.size != n:
                raise BackendError(f"{self.path}: keep mask of {flat.size} tokens for {n} visual rows")
            # runs of consecutive kept rows -> one copy each
            for d, s, nbytes in row_copies(flat, hidden * dtype.itemsize, rows, capacity, str(self.path)):
                self._memcpy(dst + d, out.ptr + s, nbytes, "DeviceToDevice")
            rows += int(flat.sum())
        _check(self._cudart.cudaStreamSynchronize(self._stream))
        return DeviceTensor(dst, (rows, hidden), dtype)

    def close(self) -> None:
        if self._scratch is None:
            return
        for ptr in [*self._in_buf.values(), *(p for s in self._out_buf.values() for p in s), self._scratch]:
            self._cudart.cudaFree(ptr)
        self._cudart.cudaStreamDestroy(self._stream)
        self._in_buf, self._out_buf, self._scratch = {}, {}, None
