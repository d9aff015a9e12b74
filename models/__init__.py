"""Flax modules."""

from models.model1 import Model1, count_params, model1_param_count

__all__ = ["Model1", "count_params", "model1_param_count"]
