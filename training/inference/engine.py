"""Which engine computes a trained classifier's probabilities: JAX, or ONNX Runtime on the exported graph.

On CPU, ONNX Runtime runs this project's ONNX export of EfficientNet-Lite1 (``models.onnx_graph``) at
1.5–1.8× the jitted JAX forward (benchmarks/RESULTS.md), so ``"auto"`` picks it there when ``onnx`` and
``onnxruntime`` are installed (``pip install -e '.[deploy]'``) and the model has an ONNX form (Model 1,
EfficientNet-Lite); otherwise, and on GPU or TPU, JAX. Both give the same probabilities to 1e-4
(``tests/test_matrix.py``). Either way the result is one ``probs_fn(params, x)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

ENGINES = ("auto", "jax", "onnxruntime")


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(requested: str, model) -> str:
    """``"jax"`` or ``"onnxruntime"`` for ``requested`` (one of :data:`ENGINES`); an impossible request raises."""
    from models.model1 import Model1
    from models.transfer import TransferClassifier

    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; expected one of {list(ENGINES)}")
    exportable = isinstance(model, Model1 | TransferClassifier)
    if requested == "onnxruntime":
        if not onnxruntime_available():
            raise ValueError("--engine onnxruntime needs the onnx and onnxruntime packages: "
                             "pip install -e '.[deploy]'")
        if not exportable:
            raise ValueError(f"--engine onnxruntime: {type(model).__name__} has no ONNX form (Model 1 and "
                             "EfficientNet-Lite do); use --engine jax")
        return requested
    if requested == "auto" and exportable and jax.default_backend() == "cpu" and onnxruntime_available():
        return "onnxruntime"
    return "jax"


def onnxruntime_probs(model, params, *, image_size: int, channels: int, tta_flip: bool,
                      threads: int | None = None) -> Callable[[object, np.ndarray], np.ndarray]:
    """``probs_fn(_, x)``: ONNX Runtime on the classifier's ONNX graph, built in memory (nothing written)."""
    import onnxruntime as ort

    from models.onnx_graph import classifier_to_onnx

    proto = classifier_to_onnx(model, params, image_size=image_size, channels=channels, tta_flip=tta_flip,
                               metadata={})
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def probs_fn(_params, x) -> np.ndarray:
        return session.run(["probabilities"], {"image": np.asarray(x, np.float32)})[0]

    return probs_fn


def probs_function(model, params, config, engine: str = "auto") -> tuple[Callable, str]:
    """``(probs_fn(params, x), engine used)`` for a trained run's model (``config``: its ``TrainConfig``): the
    jitted JAX eval step, or ONNX Runtime (takes NumPy input; ``params`` is ignored, they are in the graph)."""
    from training.loop.steps import make_eval_step

    used = choose_engine(engine, model)
    tta_flip = config.pretrained and config.tta_flip
    if used == "onnxruntime":
        return onnxruntime_probs(model, params, image_size=config.image_size, channels=3 if config.rgb else 1,
                                 tta_flip=tta_flip), used
    return make_eval_step(model, tta_flip=tta_flip), used
