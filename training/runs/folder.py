"""Run folders: refused when they hold a run, resumed only with the same settings and data, replaced atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from common.files import (
    FileFormatError,
    check_destination,
    output_dir,
    parse_document,
    umask,
    write_json_atomic,
)
from common.layout import RunLayout

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


# ---- run folders: never left inconsistent ---------------------------------------------------------------
RUN_FILE = RunLayout.RUN_FILE  # {"status": "running" | "complete", "config": …, "data": …}, written first


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds (part of) a training run."""
    run = RunLayout(folder)
    return run.run_file.is_file() or run.checkpoints.exists() or any(f.checkpoints.exists() for f in run.folds())


def read_run(folder: str | Path) -> dict:
    """The record of the run in ``folder``: ``run.json`` (``status``, ``config``, ``data``), or for a run written
    before it, the ``config`` of its saved config. A damaged one is one :class:`FileFormatError` naming it."""
    run = RunLayout(folder)
    candidates = [run.run_file, run.saved_run, *(f.saved_run for f in run.folds())]
    for p in candidates:
        if p.exists():
            data = parse_document(p, "the run's record (use --overwrite to replace the run)", fmt="json",
                                  max_bytes=16 << 20)
            if not isinstance(data, dict):
                raise FileFormatError(p, "", "not an object: use --overwrite to replace the run")
            if p != run.run_file:
                data = {"config": data.get("config", {})}
            elif data.get("status") not in ("running", "complete"):
                raise FileFormatError(p, "status", "expected 'running' or 'complete': use --overwrite to replace "
                                                   "the run")
            for key in ("config", "data"):
                if not isinstance(data.get(key, {}), dict):
                    raise FileFormatError(p, key, "not an object: use --overwrite to replace the run")
            return data
    return {}


def run_differences(old: dict, new: dict) -> list[str]:
    """``field: old → new`` for every setting (and the data) that differs between two run records."""
    diffs = []
    for section in ("config", "data"):
        a, b = old.get(section) or {}, new.get(section) or {}
        if section == "data" and not a:
            continue  # a run written before data fingerprints: only its config can be compared
        for key in sorted(set(a) | set(b)):
            if _plain(a.get(key)) != _plain(b.get(key)):
                name = key if key.isprintable() and len(key) <= 80 else _short(key)
                diffs.append(f"{'data ' if section == 'data' else ''}{name}: {_short(a.get(key))} → "
                             f"{_short(b.get(key))}")
    return diffs


def _short(value, limit: int = 80) -> str:
    """``repr(value)``, at most ``limit`` characters: a value read from a tampered run.json can be megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _plain(value):
    return json.loads(json.dumps(value))  # tuples and lists alike


def exchange(a: Path, b: Path) -> None:
    """Swap two folders. On Linux one atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere (or on a file
    system without it) three renames."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(a))
    aside = a.with_name(a.name + ".swap")
    os.rename(a, aside)
    os.rename(b, a)
    os.rename(aside, b)


class RunFolder:
    """Where a training run writes, so that a folder holds one whole run, never a mix.

    - a new folder (absent or empty): written in place; ``run.json`` first (``status: running``),
      so an interrupted run is recognised and can be resumed;
    - a folder holding a run: refused, unless ``resume`` (the settings and data must be the same:
      the fields that differ are named) or ``overwrite``;
    - ``overwrite``: the new run is written to a hidden staging folder beside it and swapped in
      only when complete; a crash before leaves the old run untouched.

    Use :meth:`check` before any work, then ``with folder.writing(record) as work: …``.
    """

    def __init__(self, target: str | Path, *, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: choose one")
        self.target, self.resume, self.overwrite = Path(target), resume, overwrite
        self.work = self.target
        self.resuming = False

    def check(self) -> None:
        """Refuse before any work when the target holds something that would be mixed or lost."""
        t = self.target
        check_destination(t, folder=True)  # a link in place of the folder is refused, not followed
        if t.exists() and not t.is_dir():
            raise FileExistsError(f"{t} exists and is not a folder: choose another --out")
        if self.overwrite or not t.is_dir() or not any(t.iterdir()):
            return
        if holds_run(t):
            if not self.resume:
                raise FileExistsError(f"{t} holds a training run: pass --resume to continue it or --overwrite to "
                                      "replace it (or choose another --out)")
            return
        raise FileExistsError(f"{t} is not empty and holds no training run: choose another --out "
                              "(or --overwrite to replace its contents)")

    @contextlib.contextmanager
    def writing(self, record: dict):
        """Yield the folder to write into; on success mark the run complete (and swap it in); on failure
        remove a staging folder, leaving the old run as it was."""
        work = self.open(record)
        try:
            yield work
        except BaseException:
            if work != self.target:
                shutil.rmtree(work, ignore_errors=True)
            raise
        self.finish()

    def open(self, record: dict) -> Path:
        """The folder to write into; ``record`` (``config``, ``data``) is checked against a resumed run."""
        self.check()
        t = self.target
        self.record = record
        if self.resume and holds_run(t):
            diffs = run_differences(read_run(t), record)
            if diffs:
                more = f"; and {len(diffs) - 10} more" if len(diffs) > 10 else ""
                raise ValueError(f"--resume: the run in {t} was trained with other settings: " + "; ".join(diffs[:10])
                                 + more
                                 + " (use the same flags, or --overwrite to start again)")
            self.resuming = True
            log.info(f"resuming the run in {t}")
        elif self.overwrite and t.exists() and any(t.iterdir()):
            for stale in t.parent.glob(f".{t.name}.new-*"):  # left by a killed --overwrite
                shutil.rmtree(stale, ignore_errors=True)
            self.work = Path(tempfile.mkdtemp(dir=t.parent, prefix=f".{t.name}.new-"))
            self.work.chmod(0o777 & ~umask())  # (mkdtemp makes it 0700) the mode mkdir gives, as the run it replaces
        else:
            if self.resume:
                log.info(f"nothing to resume in {t}: starting a new run")
            output_dir(t)
        write_json_atomic(self.work / RUN_FILE, {"status": "running", **record})
        return self.work

    def finish(self) -> None:
        """Mark the run complete; with ``overwrite``, swap it in for the old one and remove the old one."""
        write_json_atomic(self.work / RUN_FILE, {"status": "complete", **self.record})
        if self.work != self.target:
            exchange(self.target, self.work)
            shutil.rmtree(self.work)  # now the old run
            self.work = self.target
