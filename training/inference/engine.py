"""Which engine computes a trained classifier's probabilities: JAX, or ONNX Runtime on the exported graph.

On CPU, ONNX Runtime runs this project's ONNX export of EfficientNet-Lite1 (``models.onnx_graph``); it ran at
1.5–1.8× the jitted JAX forward before ``map_images``, and at about its speed since (``predict``'s engine
alone, benchmarks/RESULTS.md, issue 37 item 3), so ``"auto"`` still picks it there when ``onnx`` and
``onnxruntime`` are installed (``pip install -e '.[deploy]'``) and the model has an ONNX form (Model 1,
EfficientNet-Lite); otherwise, and on GPU or TPU, JAX. Both give the same probabilities to 1e-4
(``tests/experiments/test_matrix.py``). Either way the result is one ``probs_fn(params, x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from training.loop.devices import resolve_engine


def choose_engine(requested: str, model) -> str:
    """``"jax"`` or ``"onnxruntime"`` for ``requested`` (one of ``training.loop.devices.ENGINES``); an impossible
    request raises."""
    from models.registry import kind_of

    return resolve_engine(requested, exportable=kind_of(model).onnx is not None, what=type(model).__name__)


def onnxruntime_probs(model, params, *, image_size: int, channels: int, tta_flip: bool,
                      threads: int | None = None, calibration=None,
                      spin: bool | None = None) -> Callable[[object, np.ndarray], np.ndarray]:
    """``probs_fn(_, x)``: ONNX Runtime on the classifier's ONNX graph, built in memory (nothing written), with
    the run's ``calibration`` inside it. ``threads``: its intra-op threads (None: ONNX Runtime's default, one
    per core); ``spin``: whether they busy-wait for work between operators (None: ONNX Runtime's default, they
    do)."""
    import onnxruntime as ort

    from models.onnx_graph import classifier_to_onnx

    proto = classifier_to_onnx(model, params, image_size=image_size, channels=channels, tta_flip=tta_flip,
                               metadata={}, calibration=calibration)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def probs_fn(_params, x) -> np.ndarray:
        return session.run(["probabilities"], {"image": np.asarray(x, np.float32)})[0]

    return probs_fn


def probs_function(model, params, config, engine: str = "auto", *, calibration=None) -> tuple[Callable, Any, str]:
    """``(probs_fn, its_params, engine used)`` for a trained run's model (``config``: its ``TrainConfig``):
    ``probs_fn(its_params, x)`` → probabilities, calibrated by ``calibration`` (the run's saved
    ``training.evaluation.calibration.Calibration``; None: the raw softmax). JAX: the jitted eval step; for an
    EfficientNet-Lite classifier on the backbone with its BatchNorm folded into the convolutions once, here (the
    same function, one pass fewer per layer). ONNX Runtime: the graph holds the weights and the calibration
    (``its_params`` is None; NumPy input)."""
    from models.efficientnet_lite import fold_batchnorm
    from models.registry import kind_of
    from training.loop.registry import mirror_average
    from training.loop.steps import make_eval_step

    used = choose_engine(engine, model)
    tta_flip = mirror_average(config)
    if used == "onnxruntime":
        return onnxruntime_probs(model, params, image_size=config.image_size, channels=3 if config.rgb else 1,
                                 tta_flip=tta_flip, calibration=calibration), None, used
    if kind_of(model).pretrained and not model.folded:
        model, params = model.clone(folded=True), {**params, "backbone": fold_batchnorm(params["backbone"])}
    step = make_eval_step(model, tta_flip=tta_flip)
    if calibration is None or calibration.method == "none":
        return step, params, used
    import jax

    from training.evaluation.calibration import apply_jax

    return jax.jit(lambda p, x: apply_jax(calibration, step(p, x))), params, used


def trained_classifier(model, params, config, class_names: list[str], operating_point: dict | None,
                       engine: str = "auto", *, calibration=None):
    """What ``experiments.predict`` and ``experiments.explain`` both predict with, so that their probabilities
    are the same numbers: ``(classifier, engine used)`` for a trained run (``training.runs.saved.load_trained``
    and the ``operating_point`` its ``run_config`` holds).

    ``classifier`` (:class:`training.inference.stream.Classifier`) holds :func:`probs_function`'s
    probabilities (flip-averaged for a pretrained run) and the run's decision: its class when the
    probability reaches a saved ``--target-recall`` threshold (``training.evaluation.decision.decide``),
    else the most probable class. ``calibration``: the run's (``SavedRun.calibration``): the probabilities are
    calibrated, and the decision leaves the calibration's shift out."""
    from training.data.decoding import Preprocess
    from training.evaluation.decision import decide
    from training.inference.stream import Classifier

    probs_fn, fn_params, used = probs_function(model, params, config, engine, calibration=calibration)
    shift = None if calibration is None else calibration.shift
    classifier = Classifier(probs_fn, fn_params, Preprocess(config.image_size, config.crop, config.rgb), class_names,
                            decide=lambda p: decide(p, operating_point, shift), on_device=used == "jax")
    return classifier, used
