"""The names the commands' flags offer as choices, spelled here so that parsing imports nothing heavy.

A command parses its arguments before it imports JAX, Flax, scikit-learn or the library (a bad flag is
reported at once); the library keeps the definitions behind these names, and
``tests/experiments/test_cli.py::test_the_parsers_offer_the_library_s_names`` checks that each tuple here equals its
source's keys.
"""

from __future__ import annotations

ENGINES = ("auto", "jax", "onnxruntime")  # training.loop.devices.ENGINES
SCENARIOS = ("Pr_Im", "PrPo_Im", "Pr_PoIm", "Pr_Po_Im")  # training.data.labels.SCENARIOS
PRESETS = ("lab-2020", "improved", "pretrained")  # training.loop.config.PRESETS, less "default"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # models.efficientnet_lite.VARIANTS
MODELS = ("model1", "resnet50", "googlenet", *BACKBONES)  # training.loop.config.MODELS
FINETUNE = ("head", "top", "all")  # training.loop.config.FINETUNE
TABLE_CONFIGS = ("lab-2020", "improved", "pretrained")  # training.runs.results.CONFIGS
MLP_PRESETS = ("network", "network2")  # training.loop.config.MLP_PRESETS
ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")  # manual_backprop.ACTIVATIONS
COSTS = ("cross_entropy", "half_sse", "softmax_cross_entropy", "sse")  # manual_backprop.COSTS
EXPLAIN_METHODS = ("saliency", "grad_cam", "grad_cam_plus_plus")  # training.evaluation.explain.METHODS
THUMB_SIZE = 192  # training.evaluation.review.THUMB_SIZE: the review page's thumbnails, pixels
