"""Tiny float32 checkpoints shared by the transformers-oracle tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def ckpt_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from huluexport.checkpoint.fixtures import write_checkpoint

    # seeds picked so that 8 greedy steps are not one repeated token (random tiny nets often loop); with
    # huluexport.checkpoint.random_weights, qwen3 seeds 4 and 6 loop on the test prompt, seed 0 gives 7 tokens
    root = tmp_path_factory.mktemp("hf_ckpts")
    return {
        "qwen2": write_checkpoint(root / "qwen2", decoder="qwen2", dtype="float32", seed=1),
        "qwen3": write_checkpoint(root / "qwen3", decoder="qwen3", dtype="float32", seed=0),
        "qwen3-stored": write_checkpoint(
            root / "qwen3s", decoder="qwen3", dtype="float32", seed=6, lm_head="stored"
        ),
    }
