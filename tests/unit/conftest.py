"""Tiny checkpoints for the unit tier, written once per session (bf16 as the real checkpoints are)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from huluexport.checkpoint.fixtures import write_checkpoint

    root = tmp_path_factory.mktemp("tiny_ckpts")
    return {
        "hf-qwen2": write_checkpoint(root / "hf-qwen2", decoder="qwen2"),
        "hf-qwen3": write_checkpoint(root / "hf-qwen3", decoder="qwen3"),
        "original-qwen3": write_checkpoint(root / "orig-qwen3", decoder="qwen3", layout="original"),
    }
