"""Backends: onnxruntime (`ort`, CPU/CUDA/TensorRT execution providers) and native TensorRT (`tensorrt`).

`open_session` is the factory; it imports the chosen backend only when called, so `import hulurt` needs
neither onnxruntime nor TensorRT. The protocols and options live in `hulurt.backends.base`, which imports no
backend.
"""

from __future__ import annotations

from pathlib import Path

from hulurt.backends.base import BackendOptions, Session


def open_session(path: Path | str, options: BackendOptions | None = None) -> Session:
    """Open one graph file with the backend `options.provider` names (default options: `BackendOptions()`)."""
    p = Path(path)
    options = options if options is not None else BackendOptions()
    if options.provider == "trt-native":
        from hulurt.backends import tensorrt

        return tensorrt.TensorRTSession(p, options)
    from hulurt.backends import ort

    return ort.OrtSession(p, options)


__all__ = ["open_session"]
