"""`hulurt serve BUNDLE`: an OpenAI-compatible HTTP server for a bundle (Starlette on uvicorn; the `serve` extra),
and its Ray Serve deployment (`ray` extra). `create_app` builds the ASGI app; `main(argv)` is the command."""

from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> int:
    from hulurt.serve.cli import main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    """`create_app` / `ServerConfig` without importing Starlette at `import hulurt.serve` (PEP 562)."""
    if name in ("create_app", "ServerConfig"):
        from hulurt.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'hulurt.serve' has no attribute {name!r}")
