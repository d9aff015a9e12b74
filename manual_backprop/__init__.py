"""Backpropagation by the delta rule, written by hand in pure, jit-compatible JAX.

Convention: ``z^l = W^l a^{l-1} + b^l``, ``a^l = σ(z^l)``, ``W^l`` of shape
``(n_l, n_{l-1})``, ``params[l - 1] == (W^l, b^l)``. See :mod:`manual_backprop.network`.
"""

from manual_backprop.functions import (
    ACTIVATIONS,
    COSTS,
    Activation,
    Cost,
    get_activation,
    get_cost,
    softmax,
)
from manual_backprop.network import (
    Params,
    backprop,
    batch_cost,
    batch_gradients,
    batch_gradients_matrix,
    cost_with_manual_grad,
    example_cost,
    example_deltas,
    feedforward,
    forward,
    init_mlp,
    layer_sizes,
    naive_gradients,
    value_and_batch_gradients,
    value_and_gradients,
)
from manual_backprop.sgd import METHODS, EpochRecord, accuracy, one_hot, sgd_epoch, sgd_step, train

__all__ = [
    "ACTIVATIONS",
    "COSTS",
    "METHODS",
    "Activation",
    "Cost",
    "EpochRecord",
    "Params",
    "accuracy",
    "backprop",
    "batch_cost",
    "batch_gradients",
    "batch_gradients_matrix",
    "cost_with_manual_grad",
    "example_cost",
    "example_deltas",
    "feedforward",
    "forward",
    "get_activation",
    "get_cost",
    "init_mlp",
    "layer_sizes",
    "naive_gradients",
    "one_hot",
    "sgd_epoch",
    "sgd_step",
    "softmax",
    "train",
    "value_and_batch_gradients",
    "value_and_gradients",
]
