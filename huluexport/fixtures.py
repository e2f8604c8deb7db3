"""Moved: the fixture writers live in huluexport.checkpoint.fixtures (next to the readers of the same files),
the random weights in huluexport.checkpoint.random_weights. This name stays importable for scripts written
against it; new code imports from huluexport.checkpoint.
"""

from __future__ import annotations

from typing import Any

from huluexport.checkpoint.fixtures import (  # noqa: F401
    LM_HEAD_MODES,
    ORIGINAL_VISION_DIR,
    TINY_ADDED_TOKENS,
    TINY_BPE_SIZE,
    build_tokenizer,
    chat_template,
    fixture_config,
    write_checkpoint,
    write_tokenizer,
)


def __getattr__(name: str) -> Any:  # random_state imports torch: only on use
    if name == "random_state":
        from huluexport.checkpoint.random_weights import random_state

        return random_state
    raise AttributeError(name)
