"""Checkpoints with orbax-checkpoint: ``best`` and ``last``, each written atomically, config beside them.

Each is an orbax ``CheckpointManager`` keeping one step: orbax writes a new step into a
temporary directory and renames it into place only when complete, then removes the
older step, so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from training.tables import atomic_open


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    with atomic_open(path, encoding="utf-8") as f:
        json.dump(data, f, indent=2)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: corrupt, truncated, or of another model. The message names it."""


@contextlib.contextmanager
def _naming(path: Path):
    """Reading a checkpoint: any failure of the reader becomes a :class:`CheckpointError` naming ``path``
    (the original exception is chained; ``--debug`` shows it)."""
    try:
        yield
    except Exception as exc:  # orbax/TensorStore raise many types for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(" See full TensorStore")[0][:300]
        raise CheckpointError(f"{path}: the checkpoint cannot be read (corrupt, truncated, or written for another "
                              f"model): {type(exc).__name__}: {first}") from exc


def read_json(path: str | Path, what: str) -> Any:
    """JSON from ``path``; a missing file raises ``FileNotFoundError`` and a damaged one ``ValueError``,
    each naming the file and ``what`` it should be."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found ({what})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as {what} ({exc})") from exc


class Checkpoints:
    """``directory/best`` and ``directory/last``, one step each; ``directory/config.json`` beside."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.managers = {
            which: ocp.CheckpointManager(self.directory / which, options=options) for which in ("best", "last")
        }

    def save(self, which: str, step: int, state, meta: dict) -> None:
        """Save ``step``; a step already there (written just before a kill, then recomputed after
        ``--resume`` from an earlier ``last``) is replaced."""
        manager = self.managers[which]
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()

    def latest_step(self, which: str) -> int | None:
        return self.managers[which].latest_step()

    def restore(self, which: str, template) -> tuple[Any, dict]:
        """(state, meta) of the checkpoint, shaped like ``template`` (e.g. a freshly initialised state)."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        with _naming(self.directory / which / str(step)):
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def meta(self, which: str) -> dict:
        """The JSON metadata saved with the checkpoint (the arrays are not read)."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {self.directory}")
        with _naming(self.directory / which / str(step)):
            return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()


# ---- run folders: never left inconsistent ---------------------------------------------------------------
RUN_FILE = "run.json"  # {"status": "running" | "complete", "config": …, "data": …}, written first


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds (part of) a training run."""
    folder = Path(folder)
    return (folder / RUN_FILE).is_file() or (folder / "checkpoints").exists() or any(folder.glob("fold_*/checkpoints"))


def read_run(folder: str | Path) -> dict:
    """The record of the run in ``folder``: ``run.json``, or for a run written before it, its saved config."""
    folder = Path(folder)
    path = folder / RUN_FILE
    candidates = [path, folder / "checkpoints" / "config.json", *sorted(folder.glob("fold_*/checkpoints/config.json"))]
    for p in candidates:
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{p}: cannot be read as the run's record ({exc}); use --overwrite to replace "
                                 "the run") from exc
            return data if p == path else {"config": data.get("config", {})}
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
                diffs.append(f"{'data ' if section == 'data' else ''}{key}: {a.get(key)!r} → {b.get(key)!r}")
    return diffs


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
                raise ValueError(f"--resume: the run in {t} was trained with other settings: " + "; ".join(diffs)
                                 + " (use the same flags, or --overwrite to start again)")
            self.resuming = True
            print(f"resuming the run in {t}")
        elif self.overwrite and t.exists() and any(t.iterdir()):
            for stale in t.parent.glob(f".{t.name}.new-*"):  # left by a killed --overwrite
                shutil.rmtree(stale, ignore_errors=True)
            self.work = Path(tempfile.mkdtemp(dir=t.parent, prefix=f".{t.name}.new-"))
        else:
            if self.resume:
                print(f"nothing to resume in {t}: starting a new run")
            t.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.work / RUN_FILE, {"status": "running", **record})
        return self.work

    def finish(self) -> None:
        """Mark the run complete; with ``overwrite``, swap it in for the old one and remove the old one."""
        write_json_atomic(self.work / RUN_FILE, {"status": "complete", **self.record})
        if self.work != self.target:
            exchange(self.target, self.work)
            shutil.rmtree(self.work)  # now the old run
            self.work = self.target
