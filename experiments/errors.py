"""One line for a user's mistake: the command-line tools' error boundary."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# bad input, bad or missing files, bad weights or checkpoints, a diverging run: the user's to fix
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError,
                                                IsADirectoryError, FloatingPointError)


def user_errors(fn: Callable[[], Any], *, debug: bool = False) -> Any:
    """Run ``fn``; a user error prints ``error: <message>`` (one line, naming the file or value) and exits 1.

    With ``debug`` the traceback is shown instead. Other exceptions (bugs) propagate unchanged.
    """
    try:
        return fn()
    except USER_ERRORS as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
