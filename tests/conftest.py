"""Shared pytest setup: tiers by marker; GPU tests skip (and say why) where there is no CUDA device."""

from __future__ import annotations

import importlib.util
import os
import shutil

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
