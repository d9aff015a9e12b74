"""A finished run read back: its checked ``config.json`` and its best parameters."""

from __future__ import annotations

from pathlib import Path

from training.common.files import read_json
from training.loop.checkpoints import Checkpoints
from training.loop.config import TrainConfig, is_int, is_real
from training.loop.steps import create_model, state_template


def run_config(run_dir: str | Path) -> tuple[Path, dict]:
    """``(checkpoint folder, saved config.json)`` of a run folder; a missing or damaged one raises naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    ckpt_dir = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    config_path = ckpt_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no checkpoint config at {config_path}: is {run_dir} a training run folder?")
    saved = read_json(config_path, "a run's saved configuration")
    if not isinstance(saved, dict) or "config" not in saved or "class_names" not in saved:
        raise ValueError(f"{config_path}: not a run configuration written by experiments.train")
    try:
        check_saved_run(saved)
    except ValueError as exc:
        raise ValueError(f"{config_path}: {exc}") from exc
    return ckpt_dir, saved


def check_saved_run(saved: dict) -> TrainConfig:
    """The config of a run's ``config.json`` after checking every field (it may come from someone else).

    ``config``: see :meth:`TrainConfig.from_json`; ``class_names``: 2–10,000 distinct non-empty strings;
    ``normalization``: null or equal-length lists of finite means and positive stds; ``operating_point``:
    null or a class index in range with a threshold in [0, 1]. ``ValueError`` names the first bad field.
    """
    config = TrainConfig.from_json(saved["config"])
    names = saved["class_names"]
    if not (isinstance(names, list) and 2 <= len(names) <= 10_000 and all(isinstance(n, str) and n for n in names)
            and len(set(names)) == len(names)):
        raise ValueError("class_names: expected 2 to 10,000 distinct non-empty names")
    norm = saved.get("normalization")
    if norm is not None:
        ok = (isinstance(norm, dict) and set(norm) == {"mean", "std"}
              and all(isinstance(norm[k], list) and 0 < len(norm[k]) <= 1 << 16 for k in ("mean", "std"))
              and len(norm["mean"]) == len(norm["std"]) and all(is_real(v) for v in norm["mean"])
              and all(is_real(v) and v > 0 for v in norm["std"]))
        if not ok:
            raise ValueError("normalization: expected null or {mean: [finite numbers], std: [positive numbers]}")
    op = saved.get("operating_point")
    if op is not None and not (isinstance(op, dict) and is_int(op.get("class_index"))
                               and 0 <= op["class_index"] < len(names) and is_real(op.get("threshold"))
                               and 0 <= op["threshold"] <= 1):
        raise ValueError("operating_point: expected null or a class_index in range and a threshold in [0, 1]")
    _check_calibration_and_referral(saved, len(names))
    return config


def _check_calibration_and_referral(saved: dict, n_classes: int) -> None:
    """``calibration`` and ``referral`` (absent in runs written before them: none)."""
    from training.evaluation.calibration import check_saved_calibration, check_saved_referral

    check_saved_calibration(saved.get("calibration"), n_classes)
    check_saved_referral(saved.get("referral"))


def saved_calibration(saved: dict):
    """The run's ``Calibration`` from its checked config.json (None: uncalibrated, or written before it)."""
    from training.evaluation.calibration import check_saved_calibration

    return check_saved_calibration(saved.get("calibration"), len(saved["class_names"]))


def load_trained(run_dir: str | Path, which: str = "best"):
    """``(model, params, config, class_names)`` of a finished run; a damaged one raises naming the file."""
    ckpt_dir, saved = run_config(run_dir)
    config, class_names = TrainConfig.from_json(saved["config"]), saved["class_names"]  # checked by run_config
    model = create_model(config, len(class_names), saved.get("normalization"))
    shape = (config.image_size, config.image_size, 3 if config.rgb else 1)
    template = state_template(model, config, shape)
    ckpt = Checkpoints(ckpt_dir)
    try:
        state, _ = ckpt.restore(which, template)
    finally:
        ckpt.close()
    return model, state.params, config, class_names
