"""hulurt: run huluexport bundles of Hulu-Med with numpy and an inference engine; never torch."""

from __future__ import annotations

__version__ = "0.1.0"
