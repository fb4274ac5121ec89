"""Named crash points for crash-safety tests: SPILLOVER_CRASH_AT=<name> dies there."""

from __future__ import annotations

import os

_ENV = "SPILLOVER_CRASH_AT"


def crash_point(name: str) -> None:
    """Die at once (os._exit, no cleanup, like SIGKILL) when SPILLOVER_CRASH_AT names this point."""
    if os.environ.get(_ENV) == name:
        os._exit(75)
