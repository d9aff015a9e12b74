"""An MLP trained with the hand-written gradients, as one library call: :func:`train_mlp` (behind
``experiments.train_mlp``).

    report = train_mlp("../shared/data/mnist.npz", "runs/mlp", MlpOptions(preset="network2"))

Nielsen's setup by default: the ``network`` or ``network2`` preset of :mod:`training.loop.presets`
(``MLP_PRESETS``), any setting given in the options overriding it; plain minibatch SGD on
:func:`manual_backprop.train`'s hand-written backward. Without data, scikit-learn's embedded 8×8 digits, where the
``network`` preset draws W ~ N(0, 1/n_in) unless ``weight_scale`` says otherwise (N(0, 1) saturates some seeds
there). Writes ``history.{md,csv}``, ``summary.{md,csv}`` and ``learning_curve.png`` into ``out``. Progress goes
to the ``training`` logger (the commands show it on stdout).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


@dataclass(frozen=True)
class MlpOptions:
    """The preset (``network`` or ``network2``), the settings that override it (None: the preset's): hidden
    widths, activation, cost, learning rate η, L2 strength λ, minibatch size, epochs, initial weight scale
    (``unit`` or ``fan_in``); the seed and progress bars."""

    preset: str = "network"
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    cost: str | None = None
    eta: float | None = None
    lmbda: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    weight_scale: str | None = None
    seed: int = 0
    progress: bool = True


class MlpReport(NamedTuple):
    """What :func:`train_mlp` gives back: the data set's name, the layer sizes, the settings used, the per-epoch
    history (``manual_backprop`` rows), the final and best test accuracy with the best epoch, training seconds
    (compilation included), the final validation accuracy (None: no validation split) and the output folder."""

    data: str
    sizes: list[int]
    settings: dict[str, Any]
    seed: int
    history: list
    final_test_accuracy: float
    best_test_accuracy: float
    best_epoch: int
    train_seconds: float
    final_valid_accuracy: float | None
    out: str

    def summary(self) -> dict[str, Any]:
        """The row of ``summary.md``."""
        row = {"data": self.data, "sizes": "-".join(map(str, self.sizes)),
               **{k: v for k, v in self.settings.items() if k != "hidden"}, "seed": self.seed,
               "final_test_accuracy": self.final_test_accuracy, "best_test_accuracy": self.best_test_accuracy,
               "best_epoch": self.best_epoch, "train_seconds": self.train_seconds}
        if self.final_valid_accuracy is not None:
            row["final_valid_accuracy"] = self.final_valid_accuracy
        return row


def mlp_settings(options: MlpOptions, *, digits: bool) -> dict[str, Any]:
    """The preset's settings with the options' overrides (on the embedded ``digits``, ``network`` draws
    W ~ N(0, 1/n_in) unless ``weight_scale`` is given)."""
    from training.loop.config import MLP_PRESETS

    if options.preset not in MLP_PRESETS:
        raise ValueError(f"unknown MLP preset {options.preset!r}; expected one of {sorted(MLP_PRESETS)}")
    cfg = dict(MLP_PRESETS[options.preset])
    if digits and options.preset == "network":
        cfg["weight_scale"] = "fan_in"
    for name in cfg:
        value = getattr(options, name, None)
        if value is not None:
            cfg[name] = list(value) if name == "hidden" else value
    return cfg


def train_mlp(data: str | os.PathLike | None, out: str | os.PathLike, options: MlpOptions = MlpOptions()) -> MlpReport:
    """Train the MLP on the MNIST ``.npz`` ``data`` (None: the embedded digits) and write its report into ``out``
    (see the module); the folder is made only once the data is read."""
    import jax
    import jax.numpy as jnp

    import manual_backprop as mb
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.data.arrays import load_digits_data, load_mnist_npz

    arrays = load_digits_data(seed=options.seed) if data is None else load_mnist_npz(data)
    out = output_dir(out)  # made only once the data is read: a missing file leaves no folder behind
    cfg = mlp_settings(options, digits=data is None)
    sizes = [arrays.train.x.shape[1], *cfg["hidden"], arrays.n_classes]
    key_init, key_train = jax.random.split(jax.random.PRNGKey(options.seed))
    params = mb.init_mlp(key_init, sizes, weight_scale=cfg["weight_scale"])
    log.info(f"{arrays.name}: {len(arrays.train.x)} train / {len(arrays.test.x)} test; sizes {sizes}; {cfg}")
    start = time.perf_counter()
    params, history = mb.train(
        params, jnp.asarray(arrays.train.x), jnp.asarray(arrays.train.y),
        jnp.asarray(arrays.test.x), jnp.asarray(arrays.test.y),
        key=key_train, epochs=cfg["epochs"], batch_size=cfg["batch_size"], eta=cfg["eta"],
        activation=cfg["activation"], cost=cfg["cost"], lmbda=cfg["lmbda"], progress=options.progress,
    )
    seconds = time.perf_counter() - start
    write_table([r._asdict() for r in history], out, "history", title=f"Per-epoch history, {arrays.name}")
    valid = None if arrays.valid is None else float(mb.accuracy(
        params, jnp.asarray(arrays.valid.x), jnp.asarray(arrays.valid.y), activation=cfg["activation"],
        cost=cfg["cost"]))
    report = MlpReport(data=arrays.name, sizes=sizes, settings=cfg, seed=options.seed, history=history,
                       final_test_accuracy=history[-1].test_accuracy,
                       best_test_accuracy=max(r.test_accuracy for r in history),
                       best_epoch=max(history, key=lambda r: r.test_accuracy).epoch, train_seconds=seconds,
                       final_valid_accuracy=valid, out=str(out))
    write_table([report.summary()], out, "summary", title="MLP trained with the hand-written gradients",
                notes=f"Device: {device_description()}. Wall time includes compilation.\n")
    learning_curve(report, out / "learning_curve.png")
    return report


def learning_curve(report: MlpReport, path) -> None:
    """Test accuracy and mean training cost per epoch."""
    from common.tables import pyplot, save_figure

    history, cfg = report.history, report.settings
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(6, 4))
    epochs = [r.epoch for r in history]
    ax1.plot(epochs, [100 * r.test_accuracy for r in history], "o-", color="C0", label="test accuracy")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [r.train_cost for r in history], "s--", color="C1", label="train cost")
    ax2.set_ylabel(f"mean training cost ({cfg['cost']})", color="C1")
    ax1.set_title(f"{report.data}, {'-'.join(map(str, report.sizes))}, η={cfg['eta']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
