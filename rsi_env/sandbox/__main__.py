"""`python -m rsi_env.sandbox`: see `rsi_env.sandbox.cli`."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
