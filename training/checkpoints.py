"""Checkpoints with orbax-checkpoint: ``best`` and ``last``, each written atomically, config beside them.

Each is an orbax ``CheckpointManager`` keeping one step: orbax writes a new step into a
temporary directory and renames it into place only when complete, then removes the
older step, so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpoints:
    """``directory/best`` and ``directory/last``, one step each; ``directory/config.json`` beside."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.managers = {
            which: ocp.CheckpointManager(self.directory / which, options=options) for which in ("best", "last")
        }

    def save(self, which: str, step: int, state, meta: dict) -> None:
        manager = self.managers[which]
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
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def meta(self, which: str) -> dict:
        """The JSON metadata saved with the checkpoint (the arrays are not read)."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {self.directory}")
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
