"""Test-wide JAX settings: float32 as users run, float64 only where a test asks, no implicit rank promotion.

A test (or a whole module, with ``pytestmark``) marked ``x64`` runs inside
``jax.enable_x64(True)``: the gradient checks compare in float64. Nothing else changes JAX's
precision, and nothing is left set after the test.

Compiled programs are shared through JAX's persistent compilation cache, in a folder made for this
test session (and removed after it) and passed to the commands the tests start as subprocesses and to
pytest-xdist's workers: many tests compile the same tiny training step, and the cache changes no result
(an entry is keyed by the whole program, the backend and the JAX version).
"""

import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from training.loop.devices import float64

jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWNED_CACHE = None


def pytest_configure(config):
    global _OWNED_CACHE
    config.addinivalue_line("markers", "x64(on=True): run the test with 64-bit JAX arithmetic (scoped to the test)")
    if not os.environ.get(_CACHE_ENV):  # the first pytest process (xdist's controller) makes it
        _OWNED_CACHE = os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="jax-test-cache-")
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)


def pytest_unconfigure(config):
    if _OWNED_CACHE:
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)
        os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)


@pytest.fixture(autouse=True)
def _precision(request):
    """float64 for tests marked ``x64``; every other test runs, and is checked to end, in float32."""
    marker = request.node.get_closest_marker("x64")
    if marker and (marker.args[0] if marker.args else True):  # x64(False) opts one test out of a module's x64
        with float64():
            yield
    else:
        yield
    assert jax.dtypes.canonicalize_dtype(np.float64) == np.float32, "a test left 64-bit arithmetic switched on"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, its photos): one tiny finished run, trained once per test process and shared by every test
    that needs "a trained run": Model 1 (``--preset lab-2020``, 16 px grayscale, 1 epoch) through
    the library's ``train_and_evaluate`` (what ``experiments.train`` calls) on ``make_photos``' default folder (two
    classes ``a`` and ``b``, 7 photos each). Read-only: a test that changes the run or its photos works on a copy
    (``tiny_run_copy``)."""
    from tests.helpers import make_photos
    from training.runs.experiment import DataSpec, RunOptions, train_and_evaluate, training_config

    tmp = tmp_path_factory.mktemp("tiny_run")
    root = make_photos(tmp / "photos")
    data = DataSpec(str(root))
    train_and_evaluate(training_config("lab-2020", data, image_size=16, epochs=1), data, tmp / "run",
                       RunOptions(cache_dir=str(tmp / "cache"), progress=False))
    return tmp / "run", root


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> tuple[Path, Path]:
    """A copy of ``tiny_run``'s run folder and photos under the test's own ``tmp_path``, to change at will."""
    run, root = tiny_run
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    shutil.copytree(root, tmp_path / "photos", symlinks=True)
    return tmp_path / "run", tmp_path / "photos"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    """(folder, sentinel, files by name): the hostile weights corpus (tests/hostile_weights.py), built once per test
    process for tests/common/test_security.py and tests/experiments/test_hostile_files.py; a test writes the files
    it needs into ``folder`` (``write_corpus``); a payload that ran would create ``sentinel``."""
    from tests.hostile_weights import hostile_corpus

    return hostile_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="session")
def lite0(tmp_path_factory):
    """(params, digest) of EfficientNet-Lite0's packaged ImageNet weights, converted once per test process."""
    from models.pretrained import load_backbone

    return load_backbone("efficientnet_lite0", cache_dir=tmp_path_factory.mktemp("lite0-cache"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it sits beside the repo in CI)")
    return path
