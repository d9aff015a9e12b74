"""Checkpoints with orbax-checkpoint: ``best`` and ``last``, each written atomically, config beside them.

Each is an orbax ``CheckpointManager`` keeping one step: orbax writes a new step into a
temporary directory and renames it into place only when complete, then removes the
older step, so an interrupted save never replaces a good checkpoint."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: corrupt, truncated, or of another model. The message names it."""


def _is_reader_noise(exc: BaseException | None) -> bool:
    """An exception raised inside orbax/TensorStore's reader, or by its event loop after it was closed."""
    if exc is None:
        return False
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__)]
    return any("/orbax/" in f or "/tensorstore/" in f for f in files)


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_noise_expected() and record.exc_info and _is_reader_noise(record.exc_info[1]))


_reads = 0  # checkpoint reads in progress in this process
_failed = False  # a read has failed in this process
_filter_installed = False


def _noise_expected() -> bool:
    return bool(_reads) or _failed


def _install_noise_filter() -> None:
    """Orbax reads through TensorStore futures whose callbacks run on TensorStore's threads. When one read
    fails, the others still complete in the background and fail to reach orbax's event loop, already closed:
    unraisable coroutines, "Event loop is closed" printed from those threads (sometimes before the failure
    has even reached the caller), asyncio's "exception was never retrieved". The failure is reported once, as
    a CheckpointError. So while a read is in progress, and after one has failed, those reports (and only
    those) are dropped; anything else still goes to the hooks that were there before. Installed once per
    process; outside a read, before any failure, the hooks pass everything on."""
    global _filter_installed
    if _filter_installed:
        return
    _filter_installed = True
    unraisable, excepthook, thread_hook = sys.unraisablehook, sys.excepthook, threading.excepthook

    def on_unraisable(u):
        if not (_noise_expected() and _is_reader_noise(u.exc_value)):
            unraisable(u)

    def on_exception(kind, value, tb):
        if not (_noise_expected() and _is_reader_noise(value)):
            excepthook(kind, value, tb)

    def on_thread_exception(args):
        if not (_noise_expected() and _is_reader_noise(args.exc_value)):
            thread_hook(args)

    sys.unraisablehook, sys.excepthook, threading.excepthook = on_unraisable, on_exception, on_thread_exception
    logging.getLogger("asyncio").addFilter(_NoiseFilter())


@contextlib.contextmanager
def _naming(path: Path):
    """Reading a checkpoint: any failure of the reader becomes a :class:`CheckpointError` naming ``path``
    (the original exception is chained; ``--debug`` shows it)."""
    global _reads, _failed
    _install_noise_filter()
    _reads += 1
    try:
        yield
    except Exception as exc:  # orbax/TensorStore raise many types for damaged files
        _failed = True
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(" See full TensorStore")[0][:300]
        raise CheckpointError(f"{path}: the checkpoint cannot be read (corrupt, truncated, or written for another "
                              f"model): {type(exc).__name__}: {first}") from exc
    finally:
        _reads -= 1


class Checkpoints:
    """``directory/best`` and ``directory/last``, one step each; ``directory/config.json`` beside.

    In a job of several processes (:mod:`training.loop.distributed`) every process reads, process 0 alone
    writes, and the others keep what they save in memory (``restore`` and ``meta`` return it)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()
        # In a job of several processes every process reads, and process 0 alone writes, with the state copied to
        # the host; orbax runs in each as in one process (no cross-process barriers). The others keep what they
        # would write in memory.
        me = jax.process_index()
        self.alone = jax.process_count() > 1
        self.memory: dict[str, tuple[int, Any, dict]] | None = {} if self.alone and me else None
        jobs = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}) if self.alone else None
        # no folder is made before something is saved in it (orbax's create=True would make an empty last/ for a
        # frozen backbone's head, which has no epochs): the same files whatever the number of processes
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=False, enable_async_checkpointing=False,
                                               **({"multiprocessing_options": jobs} if jobs else {}))
        self.managers = {
            which: ocp.CheckpointManager(self.directory / which, options=options) for which in ("best", "last")
        }

    def save(self, which: str, step: int, state, meta: dict) -> None:
        """Save ``step``; a step already there (written just before a kill, then recomputed after
        ``--resume`` from an earlier ``last``) is replaced."""
        if self.alone:
            state = jax.device_get(state)  # replicated over the job's devices: this process's copy
        if self.memory is not None:
            self.memory[which] = (step, state, meta)
            return
        (self.directory / which).mkdir(parents=True, exist_ok=True)
        manager = self.managers[which]
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()

    def latest_step(self, which: str) -> int | None:
        if self.memory is not None and which in self.memory:
            return self.memory[which][0]
        return self.managers[which].latest_step()

    def restore(self, which: str, template) -> tuple[Any, dict]:
        """(state, meta) of the checkpoint, shaped like ``template`` (a state, or its ``jax.eval_shape``)."""
        if self.memory is not None and which in self.memory:
            return self.memory[which][1], self.memory[which][2]
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {self.directory}")
        # read onto this process's first device, whatever the template holds (arrays or shapes only)
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), template)
        with _naming(self.directory / which / str(step)):
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def meta(self, which: str) -> dict:
        """The JSON metadata saved with the checkpoint (the arrays are not read)."""
        if self.memory is not None and which in self.memory:
            return self.memory[which][2]
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {self.directory}")
        with _naming(self.directory / which / str(step)):
            return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
