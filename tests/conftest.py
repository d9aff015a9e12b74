"""Test-wide JAX settings: float32 as users run, float64 only where a test asks, no implicit rank promotion.

A test (or a whole module, with ``pytestmark``) marked ``x64`` runs inside
``jax.enable_x64(True)``: the gradient checks compare in float64. Nothing else changes JAX's
precision, and nothing is left set after the test.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from training.loop.devices import float64

jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "x64: run the test with 64-bit JAX arithmetic (scoped to the test)")


@pytest.fixture(autouse=True)
def _precision(request):
    """float64 for tests marked ``x64``; every other test runs, and is checked to end, in float32."""
    if request.node.get_closest_marker("x64"):
        with float64():
            yield
    else:
        yield
    assert jax.dtypes.canonicalize_dtype(np.float64) == np.float32, "a test left 64-bit arithmetic switched on"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it sits beside the repo in CI)")
    return path
