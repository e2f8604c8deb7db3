"""Bounded JSON reading for checkpoint files (config.json, the weight index, tokenizer.json, ...).

A hostile or broken file must fail in one line naming it: too large, not UTF-8, not JSON, nested deeper than
any real config, integers too long to parse, or not an object at the top. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huluexport.errors import CheckpointError

# The largest real file read this way is a Qwen tokenizer.json (about 11 MB); index files of the 32B are ~100 KB.
MAX_JSON_BYTES = 64 << 20
# Real configs nest 3-4 levels (config.json > vision_encoder_config > ...; tokenizer.json > model > merges).
MAX_DEPTH = 32


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value, stopping as soon as it exceeds `limit` (iterative, no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; CheckpointError naming the file for every way it can be unusable."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(
                f"{path}: {what} is {size} bytes; expected at most {MAX_JSON_BYTES} for a JSON file",
                file=path,
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not readable UTF-8 text ({exc})", file=path) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError(
            f"{path}: {what} is nested too deeply to parse; expected at most {MAX_DEPTH} levels", file=path
        ) from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python's int-string limit
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: {what} is not readable JSON ({msg})", file=path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object; found {type(data).__name__}", file=path)
    if depth_of(data) > MAX_DEPTH:
        raise CheckpointError(
            f"{path}: {what} nests deeper than {MAX_DEPTH} levels; no checkpoint file does", file=path
        )
    return data
