"""Typed, bounded reads of config.json values: one line naming the file and the key for every bad value.

A config.json is input: `num_attention_heads: 0`, `"hidden_size": "big"`, `-4`, `1e400`, `true` where a count
belongs, or a projector type asking for 10^8 layers must be refused here, before anything is sized from it.
The bounds are generous (several times the largest released Hulu-Med, Qwen2.5-32B) and exist so that no
value can make a later step allocate or loop without limit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from huluexport.errors import ConfigError

log = logging.getLogger(__name__)

# key -> (low, high) for every integer read from a checkpoint's config files
BOUNDS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 1 << 17),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (2, 4096),
    "vocab_size": (1, 1 << 22),
    "max_position_embeddings": (1, 1 << 24),
    "image_token_index": (0, (1 << 22) - 1),
    "patch_size": (1, 256),
    "num_channels": (1, 16),
    "min_tokens": (1, 1 << 24),
    "max_tokens": (1, 1 << 24),
    "eos_token_id": (0, (1 << 22) - 1),
}
MAX_PROJECTOR_DEPTH = 16  # mlpNx_gelu; every released checkpoint uses mlp2x_gelu


class Values:
    """Lookups in one JSON object (`raw`, at `prefix` inside `path`) that check type and range and log defaults."""

    def __init__(
        self, path: Path | str, raw: dict[str, Any], prefix: str = "", *, quiet: bool = False
    ) -> None:
        self.path, self.raw, self.prefix, self.quiet = path, raw, prefix, quiet

    def _default(self, key: str, default: Any, why: str) -> None:
        if not self.quiet:
            log.info("%s: no %s; using %r%s", self.path, self.key(key), default, f" ({why})" if why else "")

    def key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, expected: str, found: Any) -> ConfigError:
        shown = repr(found)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ConfigError(f"{self.path}: {self.key(key)} must be {expected}; found {shown}")

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def int(self, key: str, default: Any = None, why: str = "", *, bounds: str | None = None) -> Any:
        """An integer within BOUNDS[bounds or key]; None (or the default, logged) when the key is absent."""
        lo, hi = BOUNDS[bounds or key]
        value = self.raw.get(key)
        if value is None:
            if default is not None:
                self._default(key, default, why)
            return default
        return self.check_int(key, value, lo, hi)

    def check_int(self, key: str, value: Any, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"an integer in {lo}..{hi}", value)
        if not lo <= value <= hi:
            raise self.fail(key, f"an integer in {lo}..{hi}", value)
        return value

    def require_int(self, key: str) -> int:
        value = self.int(key)
        if value is None:
            raise ConfigError(f"{self.path}: required key {self.key(key)!r} is missing")
        return value

    def positive_float(self, key: str, default: float, why: str = "") -> float:
        value = self.raw.get(key)
        if value is None:
            self._default(key, default, why)
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.fail(key, "a finite number > 0", value)
        return float(value)

    def bool(self, key: str, default: bool, why: str = "") -> bool:
        value = self.raw.get(key)
        if value is None:
            self._default(key, default, why)
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def str(self, key: str, default: str | None = None) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value

    def int_list(self, key: str, *, bounds: str) -> list[int]:
        """An integer or a list of integers (eos_token_id's two spellings); [] when absent."""
        value = self.raw.get(key)
        if value is None:
            return []
        lo, hi = BOUNDS[bounds]
        items = value if isinstance(value, list) else [value]
        if len(items) > 64:
            raise self.fail(key, "an integer or a short list of integers", value)
        return [self.check_int(key, i, lo, hi) for i in items]

    def floats(self, key: str, n: int) -> tuple[float, ...] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        ok = isinstance(value, list) and len(value) == n
        ok = ok and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value
        )
        if not ok:
            raise self.fail(key, f"a list of {n} finite numbers", value)
        return tuple(float(v) for v in value)

    def section(self, key: str) -> Values | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return Values(self.path, value, f"{self.key(key)}.", quiet=self.quiet)
