"""`python -m hulurt ...`: the `hulurt` command (hulurt.cli); the console script also points here."""

from __future__ import annotations

from hulurt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
