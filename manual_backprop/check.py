"""How close a hand-written gradient is to a reference: ‖Δ‖/‖ref‖ per array, the project's one measure.

Used where the manual backward is compared with ``jax.grad`` (``training.evaluation.gradients``, behind
``experiments.compare_gradients``) and by the tests. Computed in NumPy in float64, so no program is compiled per shape.
"""

from __future__ import annotations

import jax
import numpy as np


def relative_error(actual, expected) -> float:
    """‖Δ‖/‖ref‖ of one array (‖Δ‖ where the reference is zero), in NumPy: no program compiled per shape."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    ref, diff = float(np.linalg.norm(e)), float(np.linalg.norm(a - e))
    return diff / ref if ref > 0 else diff


def max_relative_error(actual, expected) -> float:
    """Largest per-array :func:`relative_error` of two matching pytrees."""
    return max(relative_error(a, e) for a, e in zip(jax.tree_util.tree_leaves(actual),
                                                      jax.tree_util.tree_leaves(expected)))
