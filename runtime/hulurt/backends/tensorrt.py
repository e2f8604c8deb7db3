"""Native TensorRT backend (engine `.plan` files), written against TensorRT's public Python API and
cuda-python for device memory. STATUS: a place holder that has NOT been run on a GPU in this project's CI:
it raises BackendError where tensorrt or cuda-python are absent (every CPU machine) and is exercised only by
`tests/gpu/`. Use `--provider tensorrt` (onnxruntime's TensorRT execution provider) for a tested GPU path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.backends.base import BackendError, BackendOptions

log = logging.getLogger(__name__)


def _import_trt() -> Any:
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return __import__(name)
        except ImportError:
            continue
    raise BackendError(
        "the native TensorRT backend needs the `tensorrt` Python package (JetPack ships it; on x86 install "
        "TensorRT) and cuda-python; neither is a pip dependency of hulurt. Use --provider tensorrt (onnxruntime "
        "TensorRT EP) or --provider cpu instead"
    )


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError as exc:
            raise BackendError(
                "the native TensorRT backend needs cuda-python for device memory (pip install cuda-python)"
            ) from exc
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA runtime call failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTSession:
    """Session protocol over a deserialised TensorRT engine; one execution context, synchronous runs."""

    def __init__(self, path: Path, options: BackendOptions) -> None:
        trt = _import_trt()
        self._cudart = _import_cudart()
        if not path.is_file():
            raise BackendError(f"{path}: TensorRT engine file not found (build it with `huluexport build --trt`)")
        self.path = path
        self.provider = "trt-native"
        self._trt = trt
        _check(self._cudart.cudaSetDevice(options.device_id))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BackendError(
                f"{path}: TensorRT could not deserialise this engine; engines only load on the GPU model and "
                "TensorRT version they were built with (see the engines/<device>-trt<version>/ path)"
            )
        self._ctx = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_in[n]]
        self._outputs = [n for n in names if not is_in[n]]
        self._stream = _check(self._cudart.cudaStreamCreate())

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        cudart, trt = self._cudart, self._trt
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        allocations: list[int] = []
        try:
            for name in self._inputs:
                host = np.ascontiguousarray(feeds[name])
                self._ctx.set_input_shape(name, host.shape)
                ptr = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(ptr)
                if host.nbytes:
                    _check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream))
                self._ctx.set_tensor_address(name, ptr)
            outs: dict[str, NDArray[np.generic]] = {}
            for name in self._outputs:
                shape = tuple(self._ctx.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                outs[name] = np.empty(shape, dtype=dtype)
                ptr = _check(cudart.cudaMalloc(max(outs[name].nbytes, 1)))
                allocations.append(ptr)
                self._ctx.set_tensor_address(name, ptr)
            if not self._ctx.execute_async_v3(self._stream):
                raise BackendError(f"{self.path}: TensorRT execution failed")
            for name in self._outputs:
                arr = outs[name]
                if arr.nbytes:
                    ptr = self._ctx.get_tensor_address(name)
                    _check(cudart.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, d2h, self._stream))
            _check(cudart.cudaStreamSynchronize(self._stream))
            return outs
        finally:
            for ptr in allocations:
                cudart.cudaFree(ptr)
