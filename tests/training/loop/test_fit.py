"""Model 1's training loop: the step, the state, fit, refit, resume after a kill, checkpoints, NaN, devices."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.data.labels import Grouping
from training.loop.config import get_config
from training.loop.fit import fit
from training.loop.registry import build_model
from training.loop.state import create_state
from training.loop.steps import make_batch, make_train_step
from training.runs.saved import load_trained

REPO = Path(__file__).resolve().parents[3]


def tiny_problem(n=24, size=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 0.2, (n, size, size, 1)).astype(np.float32)
    x[y == 1, : size // 2] += 0.7  # class 1: bright top half
    return x, y.astype(np.int32)


def small_config(**kw):
    base = dict(image_size=24, batch_size=8, epochs=3, head_units=(16, 8), first_kernel=3, learning_rate=1e-3)
    base.update(kw)
    return get_config("lab-2020", **base)


def test_train_step_is_finite_no_recompile_and_overfits_a_tiny_batch():
    x, y = tiny_problem(n=8)
    config = small_config(dropout_rate=0.0)
    model = build_model(config, 2)
    state = create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(0))
    step = make_train_step(model)
    batch = make_batch(x, y, np.arange(8), 8, np.ones(2, np.float32))
    losses = []
    for i in range(40):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
        if i == 0:
            compiled = step._cache_size()
    assert step._cache_size() == compiled
    assert all(np.isfinite(losses)) and losses[-1] < 0.05 < losses[0]


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_the_initializer_compiled_to_run_once_draws_the_default_compilations_bits(channels):
    """The initial weights are drawn by a program compiled at LLVM's level 1 on CPU (it runs once; it compiles
    in about half the time): every array is bit for bit what the default compilation draws from the same key."""
    from models.common import run_once_compiler_options
    from training.loop.state import _initializer

    shape = (24, 24, channels)  # the module's pinned size and classes: the gray program is the other tests' one
    model = build_model(small_config(), 2)
    key = jax.random.PRNGKey(7)
    fast = _initializer(model, shape)(key)
    default = jax.jit(lambda k: model.init({"params": k}, jnp.zeros(shape, jnp.float32))["params"])(key)
    assert run_once_compiler_options() == ({"xla_backend_optimization_level": 1}
                                           if jax.default_backend() == "cpu" else None)
    pairs = list(zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree_util.tree_leaves(default), strict=True))
    assert len(pairs) == 16 and all(np.asarray(b).std() > 0 for (p, _), b in pairs if p[-1].key == "kernel")
    for (path, a), b in pairs:
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), path
    # inside another trace (a checkpoint's template is jax.eval_shape of create_state) it is inlined there
    shapes = jax.eval_shape(lambda: _initializer(model, shape)(jax.random.PRNGKey(7)))
    assert jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes) == \
        jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), fast)


@pytest.mark.parametrize("schedule", [None, "cosine"], ids=["constant", "cosine"])
def test_the_next_folds_state_runs_the_compiled_step_and_init_compiles_once(schedule):
    """A second fold (another seed, another number of steps per epoch) builds its state and trains with the
    programs the first one compiled: one initializer, one train step (with a schedule, one per number of
    steps: the rate depends on it)."""
    x, y = tiny_problem(n=8)
    config = small_config(dropout_rate=0.0, lr_schedule=schedule)
    model = build_model(config, 2)
    batch = make_batch(x, y, np.arange(8), 8, np.ones(2, np.float32))
    step = make_train_step(model)
    assert make_train_step(build_model(config, 2)) is step  # an equal model: the same function
    start, sizes = step._cache_size(), []  # (another test in this process may have compiled it already)
    for fold, steps_per_epoch in enumerate((3, 3, 4)):
        state = create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(fold), steps_per_epoch=steps_per_epoch)
        step(state, batch, jax.random.PRNGKey(0))
        sizes.append(step._cache_size())
    assert sizes[0] <= start + 1 and sizes[1] == sizes[0]
    assert sizes[2] == sizes[1] + (0 if schedule is None else 1)
    from training.loop.state import _initializer

    assert _initializer(model, tuple(x.shape[1:]))._cache_size() == 1  # three keys, one compiled initializer
    assert state.step.dtype == jnp.int32 and np.isfinite(float(step(state, batch, jax.random.PRNGKey(1))[1]["loss"]))


@pytest.mark.slow
def test_fit_writes_checkpoints_and_resume_continues(tmp_path):
    x, y = tiny_problem()
    config = small_config(epochs=2)
    first = fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path, progress=False)
    assert [h["epoch"] for h in first.history] == [1, 2]
    for which in ("best", "last"):
        assert (tmp_path / "checkpoints" / which).is_dir()
    assert json.loads((tmp_path / "checkpoints" / "config.json").read_text())["class_names"] == ["dark", "bright"]
    resumed = fit(small_config(epochs=3), x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path,
                  resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    straight = fit(small_config(epochs=3), x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path / "s",
                   progress=False)
    np.testing.assert_allclose([h["train_loss"] for h in resumed.history],
                               [h["train_loss"] for h in straight.history], rtol=1e-5)
    model, params, cfg, names = load_trained(tmp_path)
    assert names == ["dark", "bright"] and cfg.epochs == 3


def test_refit_trains_the_chosen_epochs_on_the_whole_training_part_and_keeps_that_model(tmp_path):
    """``refit``: the epoch is chosen on the inner split (the selection run, kept in ``selection/``), then the
    network trains again on the whole training part for that many epochs (the same as a run on those photos with
    that epoch count and nothing chosen), and that model is saved and scored; the run's history stays the
    selection's, whose validation rows are honest. Without an inner split there is nothing to refit."""
    from training.data.dataset import Dataset
    from training.data.loading import LoadReport
    from training.loop.scoring import splits_for
    from training.runs.folds import run_folds

    x, y = tiny_problem(n=30)
    names = ["dark", "bright"]
    data = Dataset(x=x, y=y, class_names=names, paths=[f"p{i}.png" for i in range(30)],
                   digests=[f"{i:064x}" for i in range(30)], grouping=Grouping("folders", {n: (n,) for n in names}),
                   report=LoadReport(found=30, loaded=30), source="tiny")
    config = small_config(epochs=3, selection="inner", val_fraction=0.25, refit=True)
    (result,) = run_folds(data, config, tmp_path / "run", progress=False)
    chosen = result.best_epoch
    assert 1 <= chosen <= 3 and f"then {chosen} epochs on the whole training part" in result.selection
    selection = json.loads((tmp_path / "run" / "selection" / "history.json").read_text())
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == selection and len(selection) == 3
    tr, va = splits_for(data, config)[0]
    alone = fit(small_config(epochs=chosen, selection="last"), x[tr], y[tr], x[va], y[va], names, tmp_path / "alone",
                progress=False)
    _, saved, _, _ = load_trained(tmp_path / "run")
    diff = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), saved,
                                  alone.best_params)
    assert max(jax.tree_util.tree_leaves(diff)) == 0.0  # the saved model is that run, bit for bit
    np.testing.assert_allclose(result.val_probs, alone.val_probs, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="refit trains again for the epoch chosen on an inner split"):
        small_config(refit=True)  # lab-2020: the last epoch, nothing chosen


def test_a_training_photo_is_drawn_from_its_own_map_its_mirror_and_all_its_views():
    """``Maps.training``: what ``fit`` draws each epoch's map of a photo from, the photo's and its mirror
    image's maps and those of every view, of that photo only, in that order."""
    from training.transfer.strategy import Maps

    plain = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3, 1, 1)
    views = -np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3, 1, 1) - 1
    rows = np.array([4, 1])
    got = Maps(7, plain, views).training(rows)
    assert got.shape == (2, 8, 3, 1, 1)
    np.testing.assert_array_equal(got[:, :2], plain[rows])
    np.testing.assert_array_equal(got[:, 2:], views[rows])


def test_resume_after_a_kill_between_the_best_and_the_last_checkpoint(tmp_path):
    """A kill after ``best`` of epoch 2 was written but before ``last`` of epoch 2: --resume restarts from
    ``last`` = epoch 1, recomputes epoch 2 and replaces the ``best`` step already there."""
    import shutil

    x, y = tiny_problem()
    config = small_config(epochs=2, selection="last")  # "last": every epoch is saved as best
    fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path / "s", progress=False)
    killed = tmp_path / "k"
    fit(small_config(epochs=1, selection="last"), x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], killed,
        progress=False)
    shutil.copytree(tmp_path / "s" / "checkpoints" / "best" / "2", killed / "checkpoints" / "best" / "2")
    resumed = fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], killed, resume=True, progress=False)
    straight = json.loads((tmp_path / "s" / "history.json").read_text())
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    np.testing.assert_allclose([h["train_loss"] for h in resumed.history], [h["train_loss"] for h in straight],
                               rtol=1e-6)


def test_resume_after_a_kill_between_the_last_checkpoint_and_the_history_file(tmp_path):
    """A kill after the last epoch's checkpoints were written but before history.json was: --resume has no epoch
    left to run, and still leaves history.json whole (the checkpoint's history), as after an uninterrupted run."""
    x, y = tiny_problem()
    config = small_config(epochs=2)
    fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path, progress=False)
    whole = json.loads((tmp_path / "history.json").read_text())
    (tmp_path / "history.json").write_text(json.dumps(whole[:1]))  # as the kill left it
    resumed = fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path, resume=True, progress=False)
    assert resumed.history == whole and json.loads((tmp_path / "history.json").read_text()) == whole
    assert (tmp_path / "history.csv").read_text().count("\n") == 3  # header and two epochs


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, y = tiny_problem()
    fit(small_config(epochs=1), x[:16], y[:16], x[16:], y[16:], ["a", "b"], tmp_path, progress=False)
    x_nan = x.copy()
    x_nan[0] = np.nan
    with pytest.raises(FloatingPointError, match=r"training loss became nan in epoch 2.*last good checkpoint"):
        fit(small_config(epochs=2), x_nan[:16], y[:16], x[16:], y[16:], ["a", "b"], tmp_path, resume=True,
            progress=False)
    _, params, _, _ = load_trained(tmp_path, "last")
    assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))



# --- devices ---
FOUR_DEVICES = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[1])
    from tests.training.loop.test_fit import tiny_problem, small_config
    from training.loop.devices import DataParallel
    from training.loop.registry import build_model
    from training.loop.state import create_state
    from training.loop.steps import make_batch, make_batch_loss, make_train_step
    assert len(jax.devices()) == 4, jax.devices()
    x, y = tiny_problem(n=8)
    x = x.astype(np.float64)  # float64 arithmetic; the parameters (and so their gradients) stay float32
    config = small_config()
    model = build_model(config, 2)
    out = {}
    for n_dev in (1, 4):
        dp = DataParallel(jax.devices()[:n_dev])
        state = dp.put_replicated(create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(0)))
        batch = dp.put_batch(make_batch(x, y, np.arange(8), 8, np.ones(2, np.float32)))
        assert len(batch["x"].sharding.device_set) == n_dev
        loss, grads = jax.jit(jax.value_and_grad(make_batch_loss(model)))(state.params, batch, jax.random.PRNGKey(1))
        state, m = make_train_step(model)(state, batch, jax.random.PRNGKey(1))
        out[n_dev] = (float(loss), float(m["loss"]), jax.tree_util.tree_leaves(jax.device_get(grads)),
                      str(jax.tree_util.tree_leaves(grads)[0].dtype))
    rel = [float(np.linalg.norm(np.float64(a) - b) / max(np.linalg.norm(np.float64(b)), 1e-30))
           for a, b in zip(out[4][2], out[1][2])]
    print(json.dumps({"loss1": out[1][0], "loss4": out[4][0], "step_loss1": out[1][1], "step_loss4": out[4][1],
                      "worst_grad_rel": max(rel), "grad_dtype": out[1][3]}))
""")


@pytest.mark.slow
def test_one_step_on_four_devices_equals_one_device():
    """Data parallelism must give the same loss and gradients whatever the device count.

    Compared in float64 arithmetic: the sharded and unsharded reductions differ in order only,
    by O(n·2⁻⁵³) relative; the float32 gradients then differ by at most about one float32 ulp
    (2⁻²⁴ ≈ 6e-8) per element, hence the per-array bound 1e-6 on any CPU. (Parameters after an
    Adam step are not compared: Adam's g/(√v+ε) turns float32 reduction noise in near-zero
    gradients into differences of size lr.)"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(REPO)], capture_output=True, text=True,  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                          env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(result["loss1"]) and result["grad_dtype"] == "float32"
    assert abs(result["loss4"] - result["loss1"]) <= 1e-12 * abs(result["loss1"])
    assert result["step_loss4"] == pytest.approx(result["step_loss1"], rel=1e-12)
    assert result["worst_grad_rel"] <= 1e-6

