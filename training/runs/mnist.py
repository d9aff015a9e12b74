"""Model 1 on MNIST as one library call: :func:`train_mnist_cnn` (behind ``experiments.mnist_cnn``).

    report = train_mnist_cnn("../shared/data/mnist.npz", "runs/mnist_cnn", MnistOptions(epochs=12))

Model 1 with a 5×5 first kernel on 28×28 digits (the ``mnist_cnn`` preset of :mod:`training.loop.presets`):
trained on the 50k, the epoch chosen on the 10k validation, scored once on the 10k test. Writes the run folder
(``fit``'s) and ``mnist_test.{md,csv}`` into ``out``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class MnistOptions:
    """At most this many ``epochs``, only the first ``limit`` images of each split (None: all), the seed, the
    gradients (``manual``: Model 1's hand-written backward; ``autodiff``: ``jax.grad``), progress bars."""

    epochs: int = 12
    limit: int | None = None
    seed: int = 0
    grad: str = "manual"
    progress: bool = True


class MnistReport(NamedTuple):
    """What :func:`train_mnist_cnn` gives back: the test accuracy, the chosen epoch's validation accuracy, the
    epoch, the epochs allowed, the images trained and tested on, training seconds, the gradients, the run folder."""

    test_accuracy: float
    valid_accuracy_best_epoch: float
    best_epoch: int
    epochs: int
    train_images: int
    test_images: int
    train_seconds: float
    grad: str
    out: str

    def summary(self) -> dict:
        """The row of ``mnist_test.md``."""
        return {k: v for k, v in self._asdict().items() if k != "out"}


def train_mnist_cnn(data: str | os.PathLike, out: str | os.PathLike,
                    options: MnistOptions = MnistOptions()) -> MnistReport:
    """Train and score Model 1 on the MNIST ``.npz`` ``data`` into ``out`` (see the module); the folder is made only
    once the data is read."""
    import jax

    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.data.arrays import load_mnist_npz
    from training.evaluation.metrics import classification_metrics
    from training.loop.config import get_config
    from training.loop.fit import fit
    from training.loop.presets import preset
    from training.loop.steps import make_eval_step, predict_proba
    from training.runs.saved import load_trained

    mnist = load_mnist_npz(data)
    out = output_dir(out)  # made only once the data is read: a missing file leaves no folder behind
    shape = (-1, 28, 28, 1)
    x_train, x_valid, x_test = (mnist.train.x.reshape(shape), mnist.valid.x.reshape(shape),
                                mnist.test.x.reshape(shape))
    if options.limit:  # the first N images of each split
        n = options.limit
        x_train, x_valid, x_test = x_train[:n], x_valid[:n], x_test[:n]
        mnist = mnist._replace(**{split: getattr(mnist, split)._replace(y=getattr(mnist, split).y[:n])
                                  for split in ("train", "valid", "test")})
    recipe = preset("mnist", "mnist_cnn")  # training.loop.presets
    config = get_config(recipe.base, **recipe.settings, epochs=options.epochs, seed=options.seed, grad=options.grad)
    names = [str(i) for i in range(10)]
    start = time.perf_counter()
    result = fit(config, x_train, mnist.train.y, x_valid, mnist.valid.y, names, out, progress=options.progress)
    seconds = time.perf_counter() - start
    model, params, _, _ = load_trained(out)
    probs = predict_proba(make_eval_step(model), params, x_test, batch_size=256)
    test = classification_metrics(mnist.test.y, probs, names)
    report = MnistReport(test_accuracy=test.accuracy, valid_accuracy_best_epoch=result.metrics["accuracy"],
                         best_epoch=result.best_epoch, epochs=config.epochs, train_images=len(x_train),
                         test_images=len(x_test), train_seconds=seconds, grad=config.grad, out=str(out))
    write_table([report.summary()], out, "mnist_test", title="Model-1-style CNN on MNIST",
                notes=f"Target ≥ 0.992 test accuracy (LeNet-5: 0.9905). Device: {device_description()}. "
                      f"Backend devices: {jax.device_count()}.\n")
    return report
