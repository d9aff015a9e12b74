"""Data parallelism over all local devices with ``jax.sharding``: batch axis sharded, parameters replicated.

The same code runs on CPU, GPU and TPU. For several hosts, call
``jax.distributed.initialize()`` first on every host (see README); ``jax.devices()``
then lists all hosts' devices and each host feeds its own slice of the batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DataParallel:
    """A 1-D mesh named ``data`` over ``devices`` (default: all)."""

    def __init__(self, devices=None):
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self) -> int:
        return len(self.devices)

    def padded_batch_size(self, batch_size: int) -> int:
        """The smallest multiple of the device count that holds ``batch_size`` rows."""
        return -(-batch_size // self.size) * self.size

    def put_batch(self, tree):
        return jax.device_put(tree, self.batch)

    def put_replicated(self, tree):
        return jax.device_put(tree, self.replicated)
