"""The command-line tools' error boundary: arguments checked by argparse, one line for a user's mistake.

Argument types (``positive_int``, ``positive_float``, ``fraction``, ``mapping``) make argparse
print its one-line ``error: argument --x: …`` and exit 2 before any work. :func:`run_command`
adds ``--debug`` and runs the command under :func:`user_errors`: bad input, bad or missing
files, corrupt checkpoints and a diverging run print one ``error: …`` line and exit 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

# bad input, bad or missing files, bad weights or checkpoints, a diverging run: the user's to fix
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                                                IsADirectoryError, NotADirectoryError, FloatingPointError)


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


def run_command(p: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any], argv: list[str] | None,
                validate: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None) -> Any:
    """Parse ``argv`` (adding ``--debug``), check the arguments, then ``run(args)`` under :func:`user_errors`."""
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    if validate is not None:
        validate(p, args)
    return user_errors(lambda: run(args), debug=args.debug)


def _number(kind: type, ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer ≥ 1")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer ≥ 0")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number ≥ 0")
fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1")


def image_size(text: str) -> int:
    """A square side in pixels, at least 8."""
    return _number(int, lambda v: v >= 8, "an integer ≥ 8")(text)


def mapping(text: str) -> tuple[str, str]:
    """``OLD=NEW`` with both sides non-empty."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"expected OLD=NEW (e.g. 'Probable+Possible=Probable'), got {text!r}")
    return old.strip(), new.strip()
