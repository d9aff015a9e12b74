"""The layout of a run folder, named once: every writer and reader of a run folder takes its paths from here.

::

    RUN/                      (RunLayout(RUN))
      run.json                {"status": "running" | "complete", "config": …, "data": …}, written first
      data_report.json        what the data loader found, loaded and skipped
      split.json              the photos of each part (one split; per fold with --folds)
      metrics.{md,csv,json}, history.{md,csv,json}, *.png     the report
      checkpoints/            orbax steps best/ and last/, and
        config.json           the saved run: config, class names, normalization, operating point
      fold_K/                 with --folds: a RunLayout of its own (split.json, report, checkpoints/)
      summary.{md,csv}        with --folds: mean ± std over the folds
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run folder ``root`` (nothing is read or created here)."""

    root: Path

    RUN_FILE = "run.json"
    CHECKPOINTS = "checkpoints"
    SAVED_RUN = "config.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_file(self) -> Path:
        return self.root / self.RUN_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def saved_run(self) -> Path:
        """``checkpoints/config.json``: what a command needs to use the run (see training.runs.saved)."""
        return self.checkpoints / self.SAVED_RUN

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    def fold(self, k: int) -> RunLayout:
        """The layout of outer fold ``k`` (1-based) of a run with ``--folds``."""
        return RunLayout(self.root / f"fold_{k}")

    def folds(self) -> list[RunLayout]:
        """The fold folders present, in order."""
        found = [p for p in self.root.glob("fold_*") if p.name[5:].isdigit()]
        return [RunLayout(p) for p in sorted(found, key=lambda p: int(p.name[5:]))]

    @classmethod
    def checkpoints_of(cls, path: str | Path) -> Path:
        """The checkpoint folder a command's ``--checkpoint`` names: ``path/checkpoints`` of a run folder, or
        ``path`` itself (a ``checkpoints`` folder, or a copy of one)."""
        path = Path(path)
        return path / cls.CHECKPOINTS if (path / cls.CHECKPOINTS).is_dir() else path
