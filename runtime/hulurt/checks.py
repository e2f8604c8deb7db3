"""Value checks shared by the command line (hulurt.options' table) and the Python API (SamplingConfig,
BackendOptions, Model.inputs), so both refuse the same values with the same words.

Each check takes a value and returns None when it is acceptable, else the reason as a phrase that reads after
the argument's name ("must be >= 0; got -1"). No imports beyond the standard library: this module is loaded by
every other one.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

# Below this the softmax of (logits / temperature) is a one-hot of the argmax: greedy decoding says so plainly.
MIN_TEMPERATURE = 1e-5
# Threads beyond a few per core only add contention; a huge count makes onnxruntime spend minutes creating
# pools (or fail on the first graph it opens), so it is refused up front.
THREADS_PER_CPU = 4
SEED_LIMIT = 2**64  # numpy's default_rng takes any non-negative int; 64 bits is what any user means


def cpu_count() -> int:
    return os.cpu_count() or 1


def max_threads() -> int:
    return THREADS_PER_CPU * cpu_count()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def text(v: object) -> str | None:
    """A string that can be encoded as UTF-8 (a command line with invalid bytes arrives with lone surrogates)."""
    if not isinstance(v, str):
        return f"must be text; got {type(v).__name__}"
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = v[e.start]
        raw = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        return f"is not valid UTF-8 (byte {raw} at character {e.start}); pass the text in UTF-8"
    return None


def prompt(v: object) -> str | None:
    reason = text(v)
    if reason is None and not str(v).strip():
        return "is empty; ask a question"
    return reason


def temperature(v: object) -> str | None:
    if not _is_real(v) or not math.isfinite(float(v)):  # type: ignore[arg-type]
        return f"must be a finite number; got {v!r}"
    if float(v) < MIN_TEMPERATURE:  # type: ignore[arg-type]
        return (f"must be >= {MIN_TEMPERATURE:g} (smaller values are greedy decoding: leave out --temperature); "
                f"got {v!r}")
    return None


def top_k(v: object) -> str | None:
    if not _is_int(v) or v < 0:  # type: ignore[operator]
        return f"must be an integer >= 0 (0 = off); got {v!r}"
    return None


def top_p(v: object) -> str | None:
    if not _is_real(v) or not 0.0 < float(v) <= 1.0:  # type: ignore[arg-type]
        return f"must be in (0, 1] (1 = off); got {v!r}"
    return None


def repetition_penalty(v: object) -> str | None:
    if not _is_real(v) or not (float(v) > 0 and math.isfinite(float(v))):  # type: ignore[arg-type]
        return f"must be a finite number > 0 (1 = off); got {v!r}"
    return None


def seed(v: object) -> str | None:
    if v is None:
        return None
    if not _is_int(v) or not 0 <= v < SEED_LIMIT:  # type: ignore[operator]
        return f"must be an integer in [0, 2**64); got {v!r}"
    return None


def max_new_tokens(v: object) -> str | None:
    if v is None:
        return None
    if not _is_int(v) or v < 1:  # type: ignore[operator]
        return f"must be an integer >= 1; got {v!r}"
    return None


def threads(v: object) -> str | None:
    cap = max_threads()
    if not _is_int(v) or not 0 <= v <= cap:  # type: ignore[operator]
        return (f"must be an integer from 0 (engine default) to {cap} ({THREADS_PER_CPU} per CPU, "
                f"{cpu_count()} here); got {v!r}")
    return None


def _count_or_default(v: object, default: str) -> str | None:
    if v is None:
        return None
    if not _is_int(v) or v < 1:  # type: ignore[operator]
        return f"must be an integer >= 1 (or left out for {default}); got {v!r}"
    return None


def kv_capacity(v: object) -> str | None:
    """--kv-capacity: tokens the KV cache holds, or None (the bundle's max_context); the upper bound is the
    bundle's, checked when it is loaded."""
    return _count_or_default(v, "the bundle's max_context")


def split_size(v: object) -> str | None:
    """--vision-batch / --prefill-chunk: frames or tokens per call, or None (the runtime's default)."""
    return _count_or_default(v, "the default")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def input_path(v: object, directory_ok: bool = False) -> str | None:
    """A regular file (or, where allowed, a directory), checked with stat before anything opens it: a named
    pipe or a device would block the reader forever."""
    try:
        mode = os.stat(Path(v)).st_mode  # type: ignore[arg-type]  # follows symlinks: the target counts
    except FileNotFoundError:
        return f"file not found: {v}"
    except (OSError, TypeError, ValueError) as e:
        return f"cannot be read ({v}: {e})"
    if stat.S_ISREG(mode) or (directory_ok and stat.S_ISDIR(mode)):
        return None
    wanted = "a regular file or a directory" if directory_ok else "a regular file"
    return f"must be {wanted}; {v} is {_file_kind(mode)}"


def file_path(v: object) -> str | None:
    return input_path(v, directory_ok=False)


def file_or_dir_path(v: object) -> str | None:
    return input_path(v, directory_ok=True)


def window(v: object) -> str | None:
    """A CT preset name, CENTER,WIDTH, a (center, width) pair, or None (the file's own window)."""
    if v is None:
        return None
    from hulurt.errors import UnsupportedInputError  # lazy: hulurt.media.window imports numpy
    from hulurt.media.window import resolve_window

    try:
        resolve_window(v, None, None)  # type: ignore[arg-type]
    except UnsupportedInputError as e:
        return e.reason.replace(f"window {v!r}: ", "must be ")
    return None


def num_slices(v: object) -> str | None:
    if v is None:
        return None
    if not _is_int(v) or v < 1:  # type: ignore[operator]
        return f"must be an integer >= 1; got {v!r}"
    return None


def visual_budget(v: object) -> str | None:
    """'fit', 'upstream' or a positive number of tokens (as an int, or digits on the command line); None = fit."""
    if v is None or v in ("fit", "upstream") or (_is_int(v) and v >= 1):  # type: ignore[operator]
        return None
    if isinstance(v, str) and v.isdigit() and int(v) >= 1:
        return None
    return f"must be 'fit', 'upstream' or a number of tokens >= 1; got {v!r}"


def max_pixels(v: object) -> str | None:
    if v is None:
        return None
    if not _is_int(v) or v < 1:  # type: ignore[operator]
        return f"must be an integer >= 1; got {v!r}"
    return None
