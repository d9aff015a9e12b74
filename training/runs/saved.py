"""A finished run read back: its ``config.json`` parsed once into a :class:`SavedRun`, and its best parameters.

``config.json`` (``RunLayout.saved_run``) is an object with exactly these keys:

- ``config``: the :class:`~training.loop.config.TrainConfig` (:meth:`TrainConfig.from_json`: every field checked);
- ``class_names``: 2–10,000 distinct non-empty strings of at most 200 characters;
- ``normalization`` (optional): null or :class:`Normalization`;
- ``operating_point`` (optional): null or :class:`OperatingPoint`;
- ``calibration`` (optional): null or :class:`~training.evaluation.calibration.Calibration` (fitted on inner
  predictions; its record of how it was chosen is kept in the file, not read);
- ``referral`` (optional): null or :class:`~training.evaluation.calibration.Referral`.

Anything else is one :class:`~common.files.FileFormatError` naming the file and the key. To add an
optional record (e.g. a calibration): a NamedTuple with a ``parse(value, class_names)`` that raises
``ValueError``, a field of :class:`SavedRun` defaulting to None, and its key in :data:`OPTIONAL`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from common.files import MAX_NESTING, FileFormatError, json_loads_strict, nesting_depth, read_bytes_checked
from common.layout import RunLayout
from training.evaluation.calibration import Calibration, Referral
from training.loop.checkpoints import Checkpoints
from training.loop.config import TrainConfig, is_int, is_real
from training.loop.registry import build_model
from training.loop.state import state_template

MAX_CLASSES = 10_000
MAX_CHANNELS = 1 << 16
CONFIG_BYTES = 16 << 20
# normalization bounds: training clamps a std at 1e-6 (float32: 9.99999997e-07); pixels lie in [0, 1], features
# of the frozen backbones within a few units
MIN_STD, MAX_STD, MAX_MEAN = 1e-7, 1e6, 1e6


class Normalization(NamedTuple):
    """Per-channel input statistics of the training data: ``x ↦ (x − mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, value: Any, class_names: tuple[str, ...]) -> Normalization:
        if not (isinstance(value, dict) and set(value) == {"mean", "std"}
                and all(isinstance(value[k], list) and 0 < len(value[k]) <= MAX_CHANNELS for k in ("mean", "std"))
                and len(value["mean"]) == len(value["std"])
                and all(is_real(v) and abs(v) <= MAX_MEAN for v in value["mean"])
                and all(is_real(v) and MIN_STD <= v <= MAX_STD for v in value["std"])):
            # (bounded: a std of 1e-300 or a mean of 1e308 is finite here but overflows the float32 model, and
            # predict wrote NaN probabilities for every photo)
            raise ValueError(f"expected null or {{mean: [numbers in ±{MAX_MEAN:g}], std: [numbers in "
                             f"[{MIN_STD:g}, {MAX_STD:g}]]}} of equal length")
        return cls(tuple(map(float, value["mean"])), tuple(map(float, value["std"])))

    def as_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


class OperatingPoint(NamedTuple):
    """Predict ``class_name`` (index ``class_index``) when its probability ≥ ``threshold``, chosen on selection
    data for recall ≥ ``target_recall`` (``--target-recall``; None when not recorded); otherwise the most probable
    other class."""

    class_name: str
    class_index: int
    threshold: float
    target_recall: float | None = None

    @classmethod
    def parse(cls, value: Any, class_names: tuple[str, ...]) -> OperatingPoint:
        keys = {"class", "class_index", "threshold"}
        if not isinstance(value, dict) or not keys <= set(value) <= keys | {"target_recall"}:
            got = sorted(str(k)[:40] for k in value)[:10] if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"expected null or an object with {sorted(keys)} (and target_recall), got {got}")
        c, t, r = value["class_index"], value["threshold"], value.get("target_recall")
        if not (is_int(c) and 0 <= c < len(class_names)):
            raise ValueError(f"class_index: expected an index in [0, {len(class_names)}), got {str(c)[:40]}")
        if value["class"] != class_names[c]:
            raise ValueError(f"class: {str(value['class'])[:40]!r} is not class {c} ({class_names[c]!r})")
        if not (is_real(t) and 0 <= t <= 1):
            raise ValueError(f"threshold: expected a number in [0, 1], got {str(t)[:40]}")
        if not (r is None or is_real(r) and 0 < r <= 1):
            raise ValueError(f"target_recall: expected a number in (0, 1], got {str(r)[:40]}")
        return cls(class_names[c], int(c), float(t), None if r is None else float(r))

    def as_json(self) -> dict:
        """As written to ``config.json`` (and read by :func:`training.evaluation.decision.decide`)."""
        return {"class": self.class_name, "class_index": self.class_index, "threshold": self.threshold,
                **({} if self.target_recall is None else {"target_recall": self.target_recall})}


OPTIONAL = {"normalization": Normalization.parse, "operating_point": OperatingPoint.parse,
            "calibration": Calibration.parse, "referral": Referral.parse}


@dataclass(frozen=True)
class SavedRun:
    """A run's ``config.json``, checked: what every command that uses a trained run needs from it."""

    layout: RunLayout | None  # the run folder (None for a bare checkpoints folder)
    checkpoints: Path  # the orbax folder holding best/ and last/
    path: Path  # the config.json read
    sha256: str  # of its bytes, as read
    config: TrainConfig
    class_names: tuple[str, ...]
    normalization: Normalization | None = None
    operating_point: OperatingPoint | None = None
    calibration: Calibration | None = None
    referral: Referral | None = None

    def as_json(self) -> dict:
        """The object that :func:`parse_saved_run` reads back."""
        return {"config": self.config.to_json(), "class_names": list(self.class_names),
                "normalization": self.normalization.as_json() if self.normalization else None,
                "operating_point": self.operating_point.as_json() if self.operating_point else None,
                "calibration": self.calibration.as_json() if self.calibration else None,
                "referral": self.referral.as_json() if self.referral else None}


def parse_saved_run(value: Any, path: str | Path) -> dict[str, Any]:
    """The checked fields of a parsed ``config.json`` (keys of :class:`SavedRun`), or one
    :class:`FileFormatError` naming ``path`` and the first bad key."""
    if not isinstance(value, dict):
        raise FileFormatError(path, "", f"a {type(value).__name__}, not a run configuration written by "
                                        "experiments.train")
    unknown = sorted(str(k)[:40] for k in value if k not in {"config", "class_names", *OPTIONAL})
    if unknown:
        raise FileFormatError(path, unknown[0], "unknown key (not a run configuration this version reads)")
    for key in ("config", "class_names"):
        if key not in value:
            raise FileFormatError(path, key, "missing: not a run configuration written by experiments.train")
    try:
        config = TrainConfig.from_json(value["config"])
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, "config", " ".join(str(exc).split())) from None
    names = value["class_names"]
    if not (isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES
            and all(isinstance(n, str) and 0 < len(n) <= 200 for n in names) and len(set(names)) == len(names)):
        raise FileFormatError(path, "class_names", f"expected 2 to {MAX_CLASSES:,} distinct non-empty names")
    fields: dict[str, Any] = {"config": config, "class_names": tuple(names)}
    for key, parse in OPTIONAL.items():
        if value.get(key) is not None:
            try:
                fields[key] = parse(value[key], fields["class_names"])
            except (TypeError, ValueError) as exc:
                raise FileFormatError(path, key, str(exc)) from None
    return fields


def read_saved_run(run_dir: str | Path) -> SavedRun:
    """The :class:`SavedRun` of a run folder (or of its ``checkpoints`` folder), read once: a missing folder or
    file raises ``FileNotFoundError``, anything wrong in it one :class:`FileFormatError` naming the key."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    ckpt_dir = RunLayout.checkpoints_of(run_dir)
    config_path = ckpt_dir / RunLayout.SAVED_RUN
    if not config_path.exists():
        raise FileNotFoundError(f"no checkpoint config at {config_path}: is {run_dir} a training run folder?")
    raw = read_bytes_checked(config_path, "a run's saved configuration", max_bytes=CONFIG_BYTES)
    # parsed from the bytes hashed: the digest is that of what was read, whatever happens to the file later
    value = _parse_bytes(raw, config_path)
    layout = RunLayout(run_dir) if ckpt_dir != run_dir else None
    return SavedRun(layout, ckpt_dir, config_path, hashlib.sha256(raw).hexdigest(),
                    **parse_saved_run(value, config_path))


def _parse_bytes(raw: bytes, path: Path) -> Any:
    try:
        value = json_loads_strict(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise FileFormatError(path, "", f"cannot be read as a run's saved configuration "
                                        f"({' '.join(str(exc).split())[:200]})") from None
    if nesting_depth(value) > MAX_NESTING:
        raise FileFormatError(path, "", f"nested more than {MAX_NESTING} deep")
    return value


def run_config(run_dir: str | Path) -> tuple[Path, dict]:
    """``(checkpoint folder, the checked config.json as JSON)`` of a run folder (see :func:`read_saved_run`)."""
    saved = read_saved_run(run_dir)
    return saved.checkpoints, saved.as_json()


def saved_calibration(saved: dict) -> Calibration | None:
    """The ``Calibration`` of a checked config.json as JSON (``run_config``'s; None: uncalibrated, or a run written
    before calibration)."""
    value = saved.get("calibration")
    return None if value is None else Calibration.parse(value, saved["class_names"])


def load_trained(run: str | Path | SavedRun, which: str = "best"):
    """``(model, params, config, class_names)`` of a finished run (a folder, or its :class:`SavedRun` already
    read); a damaged one raises naming the file."""
    saved = run if isinstance(run, SavedRun) else read_saved_run(run)
    config, class_names = saved.config, list(saved.class_names)
    model = build_model(config, len(class_names), saved.normalization.as_json() if saved.normalization else None)
    shape = (config.image_size, config.image_size, 3 if config.rgb else 1)
    template = state_template(model, config, shape)
    if saved.normalization is not None:  # one statistic per input channel, or per feature of a frozen backbone
        width = int(template.params["head"]["kernel"].shape[0]) if config.pretrained else shape[-1]
        if len(saved.normalization.mean) != width:
            raise FileFormatError(saved.path, "normalization",
                                  f"{len(saved.normalization.mean)} values where the model has {width} "
                                  f"{'features' if config.pretrained else 'input channels'}")
    ckpt = Checkpoints(saved.checkpoints)
    try:
        state, _ = ckpt.restore(which, template)
    finally:
        ckpt.close()
    return model, state.params, config, class_names
