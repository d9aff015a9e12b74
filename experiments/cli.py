"""The command-line tools' error boundary: arguments checked by argparse, one line for a user's mistake.

Argument types (``positive_int``, ``positive_float``, ``fraction``, ``mapping``) make argparse
print one line, ``PROG: error: argument --x: …`` (no usage block), and exit 2 before any work. :func:`run_command`
adds ``--debug`` and runs the command under :func:`user_errors`: bad input, bad or missing
files, corrupt checkpoints and a diverging run print one ``error: …`` line and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

# bad input, bad or missing files, bad weights or checkpoints, a diverging run: the user's to fix
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                                                IsADirectoryError, NotADirectoryError, FloatingPointError)


class _Stdout(logging.Handler):
    """The library's progress messages (``logging``, INFO) as plain lines on the current ``sys.stdout``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


def show_library_messages() -> None:
    """Send the library's INFO messages (resuming, epochs, caches) to stdout; idempotent."""
    log = logging.getLogger("training")
    if not any(isinstance(h, _Stdout) for h in log.handlers):
        log.addHandler(_Stdout())
        log.setLevel(logging.INFO)
        log.propagate = False


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
        del exc  # its traceback holds a failed reader's frames: free them now, not at exit
        gc.collect()  # (a failed checkpoint reader's background reports are dropped: training.loop.checkpoints)
        raise SystemExit(1) from None


def run_command(p: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any], argv: list[str] | None,
                validate: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None) -> Any:
    """Parse ``argv`` (adding ``--debug``), check the arguments, then ``run(args)`` under :func:`user_errors`."""
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.error = functools.partial(_one_line_error, p)  # type: ignore[method-assign]
    args = p.parse_args(argv)
    show_library_messages()
    if validate is not None:
        validate(p, args)
    run = _leaving_no_empty_folder(run, getattr(args, "out", None))
    if hasattr(args, "join_timeout"):  # a command that can run as several processes
        from training.loop.distributed import job_from, join

        try:  # the job flags and environment, checked before any runtime starts
            job = job_from(args.coordinator, args.num_processes, args.process_id, timeout_s=args.join_timeout)
        except ValueError as exc:
            p.error(str(exc))
        user_errors(lambda: join(job), debug=args.debug)  # process 0: its port taken, or not its address
        if job is not None:
            return _in_job(lambda: user_errors(lambda: run(args), debug=args.debug))
    return user_errors(lambda: run(args), debug=args.debug)


def _one_line_error(p: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error, as one line (``PROG: error: …``; no usage block above it) and exit status 2."""
    p.exit(2, f"{p.prog}: error: {' '.join(message.split())}\n")


def _leaving_no_empty_folder(run: Callable[[argparse.Namespace], Any],
                             out: str | None) -> Callable[[argparse.Namespace], Any]:
    """``run``, after which a failure removes the empty folders it made on the way to ``out``."""
    if not out:
        return run
    keep = _existing_ancestor(out)

    def checked(args: argparse.Namespace) -> Any:
        try:
            return run(args)
        except BaseException:
            _remove_new_empty_folders(Path(out), keep)
            raise

    return checked


def _existing_ancestor(path: str) -> Path:
    """The nearest of ``path`` and its parents that exists now (``path`` itself when it exists)."""
    here = Path(path).absolute()
    while not os.path.lexists(here) and here.parent != here:
        here = here.parent
    return here


def _remove_new_empty_folders(path: Path, keep: Path) -> None:
    """Remove the folders a failed command made between ``keep`` (which existed before) and ``path`` when they
    hold nothing but empty folders; never a file, a symlink, or anything at or above ``keep``."""
    here = path.absolute()
    if here == keep or keep not in here.parents:
        return
    while here != keep:
        if here.is_dir() and not here.is_symlink():
            for root, dirs, files in os.walk(here, topdown=False):
                if files or any(Path(root, d).is_symlink() for d in dirs):
                    return
                with contextlib.suppress(OSError):
                    os.rmdir(root)
            if os.path.lexists(here):
                return
        here = here.parent


def _in_job(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a process of a job. Success: the job's exit barrier (every process finished). Failure:
    this process leaves at once (after its one line, or a bug's traceback), and the job's watch ends every
    other process with one line (``training.loop.distributed``)."""
    import traceback

    from training.loop.distributed import abandon, finish

    try:
        result = fn()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if code == 0:
            finish()
            raise
    except BaseException:
        traceback.print_exc()
        code = 1
    else:
        finish()
        return result
    sys.stdout.flush()
    sys.stderr.flush()
    abandon(code)


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
fraction_or_one = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


MAX_WORKERS = 256  # decoding threads: more than any machine's cores, far fewer than would exhaust its memory


def worker_count(text: str) -> int:
    """A number of decoding threads, 1 … :data:`MAX_WORKERS`."""
    return _number(int, lambda v: 1 <= v <= MAX_WORKERS, f"an integer from 1 to {MAX_WORKERS}")(text)


def image_size(text: str) -> int:
    """A square side in pixels, at least 8."""
    return _number(int, lambda v: v >= 8, "an integer ≥ 8")(text)


def mapping(text: str) -> tuple[str, str]:
    """``OLD=NEW`` with both sides non-empty."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"expected OLD=NEW (e.g. 'Probable+Possible=Probable'), got {text!r}")
    return old.strip(), new.strip()


# --- the options every command spells the same way ---------------------------------------------------------------

COMMON_HELP = {
    "data": "a folder of class subfolders, or a CSV manifest (path,label)",
    "out": "output folder",
    "seed": "the seed of every random choice (splits, initialisation, shuffling, augmentation)",
    "skip-bad": "skip unreadable photos (counted and named in the report) instead of stopping",
    "cache-dir": "cache of preprocessed images, features and converted weights (default ~/.cache/tree-risk-jax)",
    "workers": "decoding threads, at most 256 (default: all cores)",
    "no-progress": "no progress bars",
    "engine": "what runs the frozen network forward (predict's probabilities, the backbone's features): jax, or "
              "onnxruntime on this project's ONNX graph (the 'deploy' extra); auto (default): onnxruntime on CPU "
              "when installed and the model has an ONNX form (1.5–1.8× faster there), else jax. Both agree to 1e-4",
    "coordinator": "join a job of several processes: HOST:PORT of process 0, [IPv6]:PORT for IPv6 (with "
                   "--num-processes and --process-id; or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                   "JAX_PROCESS_ID, or Slurm's srun, or Open MPI's mpirun)",
    "num-processes": "the number of processes in the job (at most 65536)",
    "process-id": "this process's index in the job, 0 … N−1 (0 writes the outputs)",
    "join-timeout": "seconds to wait for every process to join (and to notice one that died) before "
                    "stopping with an error (default 120, at most 86400)",
}

DISTRIBUTED = ("coordinator", "num-processes", "process-id", "join-timeout")


def add_common(p: argparse.ArgumentParser, *names: str, out: str | None = None, data_required: bool = False,
               data_help: str | None = None) -> None:
    """Add the shared options ``names`` (``data``, ``out``, ``seed``, ``skip-bad``, ``cache-dir``, ``workers``,
    ``no-progress``, ``engine``, and the job flags :data:`DISTRIBUTED`), spelled, typed and documented once;
    ``--debug`` is added by :func:`run_command`, which also joins the job the job flags describe."""
    for name in names:
        flag, help_text = f"--{name}", COMMON_HELP[name]
        if name == "data":
            p.add_argument(flag, required=data_required, help=data_help or help_text)
        elif name == "out":
            p.add_argument(flag, default=out, help=f"{help_text} (default {out})")
        elif name == "seed":
            p.add_argument(flag, type=int, default=0, help=f"{help_text} (default 0)")
        elif name == "workers":
            p.add_argument(flag, type=worker_count, help=help_text)
        elif name == "engine":
            from experiments.names import ENGINES

            p.add_argument(flag, choices=ENGINES, default="auto", help=help_text)
        elif name in ("cache-dir", "coordinator"):
            p.add_argument(flag, help=help_text)
        elif name == "num-processes":
            p.add_argument(flag, type=positive_int, help=help_text)
        elif name == "process-id":
            p.add_argument(flag, type=nonnegative_int, help=help_text)
        elif name == "join-timeout":
            p.add_argument(flag, type=positive_float, default=120.0, help=help_text)
        else:
            p.add_argument(flag, action="store_true", help=help_text)


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` for one more release as another spelling of ``new``, with a warning on stderr."""

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"warning: {old} is deprecated and will be removed in the next release; use {new}",
                  file=sys.stderr)
            setattr(namespace, self.dest, values)

    p.add_argument(old, dest=dest, action=Alias, help=f"deprecated spelling of {new}", **kwargs)
