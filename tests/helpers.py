"""Helpers shared by the test files: pytree comparisons, a synthetic photo folder, predictions CSVs, features."""

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np


def relative_errors(actual, expected) -> list[float]:
    """‖actual − expected‖ / ‖expected‖ for each array of two matching pytrees.

    Where the reference array is exactly zero (a dead ReLU layer), the absolute
    norm of the difference is used instead.
    """
    a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
    e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
    assert a_tree == e_tree, f"structures differ: {a_tree} vs {e_tree}"
    errors = []
    for a, e in zip(a_leaves, e_leaves):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"shapes differ: {a.shape} vs {e.shape}"
        assert np.all(np.isfinite(a)), "non-finite values in the result"
        ref = np.linalg.norm(e)
        diff = np.linalg.norm(a - e)
        errors.append(float(diff / ref) if ref > 0 else float(diff))
    return errors


def assert_tree_close(actual, expected, rtol: float) -> None:
    """Per-array relative error of two pytrees at most ``rtol``."""
    errors = relative_errors(actual, expected)
    assert max(errors) <= rtol, f"per-array relative errors {errors} exceed {rtol}"


def jitted_features(model):
    """``(params, images) -> pooled features`` of an EfficientNetLite, vmapped and jitted."""
    return jax.jit(jax.vmap(lambda p, im: model.apply({"params": p}, im, features_only=True), (None, 0)))


def read_predictions(path) -> list[dict]:
    """The rows of a CSV written by ``experiments.predict``, probabilities as floats, text as written (the CSV
    formula rule undone: ``common.files.csv_value``)."""
    import csv

    from common.files import csv_value

    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [{k: float(v) if k.startswith("p_") else int(v) if k == "refer" else csv_value(v)
                 for k, v in row.items()}
                for row in csv.DictReader(f)]


def unwritable_folder(tmp_path):
    """An existing folder this process cannot write in: a 0500 folder under ``tmp_path``, or, for root (who
    writes anywhere; CI runs as root), ``/sys/kernel``, which refuses new entries to root too. Skips the
    test where neither is available. (The caller restores ``tmp_path``'s folders' modes itself if it needs.)"""
    import os
    from pathlib import Path

    import pytest

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        return ro
    kernel = Path("/sys/kernel")
    try:
        kernel.joinpath(".tree-risk-write-probe").open("x").close()
    except PermissionError:
        return kernel
    except OSError:
        pass
    else:  # pragma: no cover - a writable sysfs: leave nothing behind
        kernel.joinpath(".tree-risk-write-probe").unlink()
    pytest.skip("running as root and no folder refuses root's writes (/sys/kernel is absent or writable)")
def make_photos(root: Path, labels: Sequence[str] = ("a", "b"), n: int = 7, size: int | tuple[int, int] = 12, *,
                seed: int = 1, shades: Sequence | bool | None = None, spread: float = 30.0,
                name: str = "{label}{i}.png") -> Path:
    """A synthetic photo folder, ``root/<label>/<name>``: ``n`` RGB PNGs a class, ``size`` px (or (height, width)).

    Class k's pixels are drawn from N(shadeₖ, spread²), clipped to 0–255 (shadeₖ = 60 + 120·k unless
    ``shades`` gives one number or RGB triple a class), so a tiny model separates the classes;
    ``shades=False`` draws uniform noise instead (no class signal). ``name`` is formatted with ``label``
    and ``i``. One NumPy generator from ``seed`` draws every photo in order: the folder is the same
    bit for bit each time. Returns ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    for k, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if shades is False:
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                shade = np.asarray(shades[k] if shades else 60 + 120 * k, np.float64)
                arr = np.clip(rng.normal(shade, spread, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / name.format(label=label, i=i))
    return root


HOSTILE_PHOTO_NAME = "<img src=x onerror=alert(1)> & \"q\" 'x'.jpg"  # a legal file name on Linux
REVIEW_CLASSES = ["Improbable", "Possible", "Probable"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV of ``header`` and ``rows`` at ``path`` (UTF-8, csv module quoting); returns ``path``."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def review_photos(root: Path) -> Path:
    """Four tiny photos under ``root``: one in a subfolder, one named :data:`HOSTILE_PHOTO_NAME`, one stored
    sideways (EXIF orientation 6). Returns ``root``."""
    from PIL import Image

    (root / "siteA").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "siteA/b.jpg", HOSTILE_PHOTO_NAME):
        Image.fromarray(rng.integers(0, 255, (12, 24, 3), dtype=np.uint8)).save(root / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: a 24×12 stored image shows 12 wide, 24 high
    Image.fromarray(rng.integers(0, 255, (12, 24, 3), dtype=np.uint8)).save(root / "sideways.jpg", exif=exif)
    return root


def review_predictions_csv(folder: Path, refer: bool = True) -> Path:
    """``folder/predictions.csv`` as predict writes it for :func:`review_photos` (with a refer column)."""
    rows = [["a.jpg", "Probable", 0.05, 0.15, 0.80, "false"],
            ["siteA/b.jpg", "Possible", 0.30, 0.40, 0.30, "true"],  # the least certain
            [HOSTILE_PHOTO_NAME, "Improbable", 0.60, 0.30, 0.10, "false"],
            ["sideways.jpg", "Probable", 0.0, 0.02, 0.98, "false"]]
    header = ["path", "predicted", *[f"p_{c}" for c in REVIEW_CLASSES]] + (["refer"] if refer else [])
    return write_csv(folder / "predictions.csv", header, [r if refer else r[:-1] for r in rows])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a job's coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env() -> dict[str, str]:
    """The environment of a job's test process: this checkout on PYTHONPATH, JAX on one CPU device."""
    import os

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return env


def saved_run_record(**changes) -> dict:
    """A valid run record (``checkpoints/config.json``) of the default configuration and two classes, with
    ``changes`` replacing whole fields."""
    import json

    from training.loop.config import get_config

    record = {"config": json.loads(json.dumps(get_config().to_json())), "class_names": ["not_a_tree", "tree"],
              "normalization": None, "operating_point": {"class": "tree", "class_index": 1, "threshold": 0.4}}
    return {**record, **changes}
