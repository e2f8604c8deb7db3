"""Rendering chat templates as untrusted input: a bundle's chat_template.json is a program, so it runs in Jinja2's
immutable sandbox with limits on time, output size, recursion and the size of anything it builds, and every
failure is one UnsupportedInputError naming the chat template (docs/cli.md, "Chat templates").

The limits:
- time: a watchdog raises RenderTimeout inside the rendering thread once MAX_SECONDS pass (CPython's
  PyThreadState_SetAsyncExc; Jinja loops are Python bytecode, so they stop at the next instruction);
- size: output beyond the cap stops the render; `*`, `+` and `**` in the template, filters and method calls
  are refused before they would build a string, list or number beyond it;
- recursion: macro calls nested deeper than MAX_DEPTH (and Python's own RecursionError) stop it.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from hulurt.errors import UnsupportedInputError

MAX_SECONDS = 2.0  # a real template renders in well under a millisecond
MAX_CHARS = 1_000_000  # output and intermediate size, plus twice the size of the data passed in
MAX_DEPTH = 64  # nested calls (macros calling macros)
_BIG_WIDTH = re.compile(r"\d{7,}")  # a width/precision of 1e6+ in a format string
# functions, methods and filters whose integer arguments size what they build
_SIZED = frozenset(("range", "center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap", "batch",
                    "slice", "repeat"))


class RenderTimeout(Exception):
    """Raised inside the rendering thread by the watchdog."""


class TemplateLimit(Exception):
    """A template went beyond one of this module's limits."""


def _size(v: Any) -> int | None:
    return len(v) if isinstance(v, (str, bytes, list, tuple)) else None


class _Watchdog:
    """Raise RenderTimeout in this thread after `seconds`, unless the block ended first."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._tid = threading.get_ident()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                _async_raise(self._tid, RenderTimeout)

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
            self._timer.cancel()
            if self.fired:
                _async_raise(self._tid, None)  # clear it if not delivered yet
        if self.fired and exc[0] is None:
            raise RenderTimeout


def _async_raise(tid: int, exc: type[BaseException] | None) -> None:
    api = getattr(ctypes, "pythonapi", None)
    if api is not None:  # CPython; elsewhere only the size, depth and loop limits apply
        api.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(exc) if exc else None)


class _State(threading.local):
    """The running render's limits and call depth: per thread, so one compiled template serves every thread."""

    cap = MAX_CHARS
    depth = 0


_state = _State()


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    """One sandboxed environment per template string, compiled once (compiling takes far longer than
    rendering); the limits are read from `_state` at render time."""
    env = _environment()
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def _environment() -> Any:
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def refuse(what: str) -> SecurityError:
        return SecurityError(f"{what} would exceed the size limit of {_state.cap} characters")

    def check_args(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        for a in (*args, *kwargs.values()):
            if name in _SIZED and isinstance(a, int) and not isinstance(a, bool) and abs(a) > _state.cap:
                raise refuse(f"{name} with the argument {a}")
            if isinstance(a, str) and name in ("format", "format_map", "%") and _BIG_WIDTH.search(a):
                raise refuse(f"{name} with a width in {a[:40]!r}")

    class Guarded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "+", "**", "%"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                n = next((x for x in (left, right) if isinstance(x, int) and not isinstance(x, bool)), None)
                seq = _size(right if n is left else left)
                if n is not None and seq is not None and seq * max(n, 0) > _state.cap:
                    raise refuse(f"repeating a sequence of {seq} {n} times")
            elif operator == "+":
                a, b = _size(left), _size(right)
                if a is not None and b is not None and a + b > _state.cap:
                    raise refuse("joining two sequences")
            elif operator == "**":
                if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 and \
                        right * math.log2(abs(left)) > 4096:
                    raise refuse(f"{left} ** {right}")
            elif operator == "%" and isinstance(left, str):
                check_args("%", (left,), {})
            return super().call_binop(context, operator, left, right)

        def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            name = getattr(obj, "__name__", "call")
            check_args(name, args, kwargs)
            bound = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)  # the sandbox wraps str.format
            if name in ("format", "format_map") and isinstance(bound, str):
                check_args(name, (bound,), {})
            if _state.depth >= MAX_DEPTH:
                raise TemplateLimit(f"calls nested deeper than {MAX_DEPTH} (a recursive macro?)")
            _state.depth += 1
            try:
                return super().call(context, obj, *args, **kwargs)
            finally:
                _state.depth -= 1

    env = Guarded(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        skip = 2 if hasattr(f, "jinja_pass_arg") else 1  # (environment/context,) value, then the arguments

        def guarded(*args: Any, **kwargs: Any) -> Any:
            check_args(name, args[skip:], kwargs)
            return f(*args, **kwargs)

        for attr in ("jinja_pass_arg",):  # keep pass_context/pass_environment markers
            if hasattr(f, attr):
                setattr(guarded, attr, getattr(f, attr))
        return guarded

    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.filters = {k: guard_filter(k, f) for k, f in env.filters.items()}
    return env


def _raise(message: str) -> None:
    raise UnsupportedInputError("chat template", message)


def _data_chars(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, Mapping):
        return sum(_data_chars(k) + _data_chars(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return sum(_data_chars(x) for x in v)
    return 0


def render_template(template: str, variables: Mapping[str, Any], max_seconds: float = MAX_SECONDS,
                    max_chars: int = MAX_CHARS) -> str:
    """Render `template` with `variables` under the limits above; any failure -> one UnsupportedInputError."""
    try:
        from jinja2.exceptions import SecurityError, TemplateError
    except ImportError as e:
        raise UnsupportedInputError(
            "chat template", f"rendering needs jinja2: pip install 'huluexport-runtime[tokenizer]' ({e})"
        ) from e
    cap = max_chars + 2 * _data_chars(variables)
    _state.cap, _state.depth = cap, 0
    started = time.perf_counter()
    out: list[str] = []
    total = 0
    try:
        with _Watchdog(max_seconds):
            tpl = _compiled(template)
            chunks: Iterator[str] = tpl.generate(**variables)
            for chunk in chunks:
                total += len(chunk)
                if total > cap:
                    raise TemplateLimit(f"the output passed the size limit of {cap} characters")
                out.append(chunk)
    except UnsupportedInputError:
        raise
    except RenderTimeout:
        raise UnsupportedInputError(
            "chat template", f"rendering took longer than {max_seconds:g} s and was stopped (a runaway loop?)"
        ) from None
    except RecursionError:
        raise UnsupportedInputError("chat template", "rendering recursed too deeply (a recursive macro?)") from None
    except (TemplateLimit, SecurityError) as e:
        raise UnsupportedInputError("chat template", f"rendering refused: {e}") from None
    except TemplateError as e:
        raise UnsupportedInputError("chat template", f"rendering failed: {e}") from e
    except MemoryError:
        raise UnsupportedInputError("chat template", "rendering ran out of memory") from None
    except Exception as e:  # the template's own code failed: 1/0, a type error, a bad attribute...
        raise UnsupportedInputError(
            "chat template", f"rendering failed after {time.perf_counter() - started:.3f} s: "
            f"{type(e).__name__}: {e}"
        ) from e
    return "".join(out)
