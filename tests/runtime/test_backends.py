"""Backends: the Session protocol over onnxruntime (CPU here), provider resolution, threads, lazy imports,
and the native TensorRT place holder's clear refusal where tensorrt/cuda-python are absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hulurt.backends import open_session
from hulurt.backends.base import BackendError, BackendOptions, Session


@pytest.fixture(scope="module")
def add_graph(onnx_add_graph: Path) -> Path:
    """z = x + y over [n, 3] floats (written by tests/conftest.py: this tier does not import onnx)."""
    return onnx_add_graph


def test_ort_cpu_session_runs_and_reports(add_graph: Path) -> None:
    sess = open_session(add_graph, BackendOptions(provider="cpu", threads=1))
    assert isinstance(sess, Session)
    assert sess.provider == "cpu" and sess.input_names() == ["x", "y"] and sess.output_names() == ["z"]
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = sess.run({"x": a, "y": a * 2})
    np.testing.assert_array_equal(out["z"], a * 3)
    assert not sess.on_device  # type: ignore[attr-defined]


def test_auto_picks_best_available(add_graph: Path) -> None:
    from hulurt.backends import ort

    have = ort.available()
    assert "cpu" in have
    sess = open_session(add_graph, BackendOptions())
    # the best listed one, or, where onnxruntime-gpu lists GPU providers that cannot start (no driver or no CUDA
    # libraries: the CPU rehearsal of docs/gpu.md, tests/runtime/test_provider_fallback.py), the CPU it runs on
    assert sess.provider == have[0] or sess.provider == "cpu" and not sess.on_device  # type: ignore[attr-defined]
    if have == ["cpu"]:
        assert sess.provider == "cpu"


def test_unavailable_provider_names_what_is_available(add_graph: Path) -> None:
    from hulurt.backends import ort

    missing = [p for p in ("cuda", "tensorrt") if p not in ort.available()]
    if not missing:
        pytest.skip("this onnxruntime has every GPU provider")
    with pytest.raises(BackendError, match=f"provider '{missing[0]}' was requested but this onnxruntime offers only"):
        open_session(add_graph, BackendOptions(provider=missing[0]))


def test_session_options_are_latency_tuned() -> None:
    from hulurt.backends import ort

    so = ort.session_options(BackendOptions(threads=3))
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort._ort().ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort._ort().GraphOptimizationLevel.ORT_ENABLE_ALL


def test_gpu_provider_options() -> None:
    """What the CUDA EP is opened with (this onnxruntime may have no CUDA EP to open; tests/gpu checks the options
    an opened session reports): fp32 math for fp32 graphs, graph capture only when asked; TensorRT's CUDA
    fallback gets the same."""
    from hulurt.backends.ort import provider_list

    (name, cuda), cpu = provider_list("cuda", BackendOptions(provider="cuda", device_id=1))
    assert (name, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert cuda == {"device_id": 1, "use_tf32": "0"}
    (_, graph), _ = provider_list("cuda", BackendOptions(provider="cuda", cuda_graph=True))
    assert graph["enable_cuda_graph"] == "1" and graph["use_tf32"] == "0"
    _trt, (_, fallback), _ = provider_list("tensorrt", BackendOptions(provider="tensorrt"))
    assert fallback["use_tf32"] == "0"
    assert provider_list("cpu", BackendOptions(provider="cpu")) == ["CPUExecutionProvider"]


def test_bad_options_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="provider 'metal' is unknown"):
        BackendOptions(provider="metal")
    with pytest.raises(BackendError, match="threads must be an integer from 0"):
        BackendOptions(threads=-1)
    with pytest.raises(BackendError, match="graph file not found"):
        open_session(tmp_path / "nope.onnx", BackendOptions(provider="cpu"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BackendError, match="could not load this graph"):
        open_session(bad, BackendOptions(provider="cpu"))


def test_native_tensorrt_placeholder_refuses_clearly(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime  # noqa: F401

        pytest.skip("tensorrt and cuda-python are installed: the gpu tier covers the native backend")
    except ImportError:
        pass
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        with pytest.raises(BackendError, match="native TensorRT backend needs"):
            open_session(tmp_path / "vision.onnx", BackendOptions(provider="trt-native"))
    else:  # a TensorRT module is there (tensorrt-rtx in CI): the refusal names the missing engine directory
        from hulurt.engines.meta import EngineError

        with pytest.raises(EngineError, match=r"engines: no engines built for this bundle; build them here with"):
            open_session(tmp_path / "vision.onnx", BackendOptions(provider="trt-native"))


def test_backends_are_imported_lazily() -> None:
    code = (
        "import sys, hulurt.backends.base, hulurt.generate, hulurt.api\n"
        "print(sorted(m for m in ('onnxruntime', 'tensorrt', 'tensorrt_rtx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
