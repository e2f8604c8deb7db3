"""Shared pytest setup: tiers by marker; GPU tests skip (and say why) where there is no CUDA device; fixtures
built by huluexport that the runtime tier (tests/runtime, which imports only hulurt) reads."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest


def _cuda_available() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return True, ""
        return False, "no CUDA device visible to torch (CPU machine): GPU test NOT run"
    if shutil.which("nvidia-smi") is None:
        return False, "no CUDA device (no torch, no nvidia-smi): GPU test NOT run"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ok, why = _cuda_available()
    if ok or os.environ.get("HULU_FORCE_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: a checkout in a dir named gpu
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    """The tiny checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json), cached; read-only."""
    from e2e.bundles import tokenizer

    return tokenizer()


@pytest.fixture(scope="session")
def onnx_add_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-node ONNX graph, z = x + y over float [n, 3] (opset 17), for backend tests that need any graph."""
    import onnx
    from onnx import TensorProto, helper

    x, y, z = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3]) for n in ("x", "y", "z"))
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", [x, y], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("graph") / "add.onnx"
    onnx.save(model, path)
    return path
