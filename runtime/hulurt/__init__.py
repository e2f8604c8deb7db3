"""hulurt: run huluexport bundles of Hulu-Med with numpy and an inference engine; never torch."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`hulurt.load` without importing the runtime's modules at `import hulurt` (lazy, PEP 562)."""
    if name == "load":
        from hulurt.api import load

        return load
    raise AttributeError(f"module 'hulurt' has no attribute {name!r}")
