"""Checkpoints with orbax-checkpoint: ``best`` and ``last``, each written atomically, config beside them.

Each is an orbax ``CheckpointManager`` keeping one step: orbax writes a new step into a
temporary directory and renames it into place only when complete, then removes the
older step, so an interrupted save never replaces a good checkpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


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
