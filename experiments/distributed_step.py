"""One data-parallel training step across processes, checked against the same step in one process.

    python -m experiments.distributed_step --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 0 &
    python -m experiments.distributed_step --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 1

Every process joins the job (``jax.distributed.initialize``; on CPU, JAX's gloo collectives), holds
its own slice of a seeded minibatch of Model 1 images, and takes one jitted Optax Adam step on the
global batch sharded over every process's devices. Each process then takes the same step on the
whole batch with its own first device alone and prints one JSON line: both losses and the largest
difference (per array, relative to the array's norm) of the gradients and of the parameters after
the step. The arithmetic is float64, so the two differ only by the reduction order across
processes: O(m · 2⁻⁵³) relative.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from experiments.errors import DISTRIBUTED, add_common, deprecated_alias, positive_int, run_command


def run(args: argparse.Namespace) -> dict:
    from training.loop.devices import float64

    with float64():  # the step is compared in float64 (see the README's bounds)
        return _step(args)


def _step(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp

    from training.loop.config import get_config
    from training.loop.devices import DataParallel, put_process_batch
    from training.loop.steps import create_model, create_state, make_batch, make_batch_loss, make_train_step

    n_proc, me = jax.process_count(), jax.process_index()
    m = args.batch_size
    if m % n_proc:
        raise ValueError(f"--batch {m} must be a multiple of the {n_proc} processes")
    config = get_config("lab-2020", image_size=args.image_size, head_units=(16, 8))
    model = create_model(config, 2)
    rng = np.random.default_rng(0)  # the same global batch in every process
    x = rng.uniform(size=(m, args.image_size, args.image_size, 1))
    y = (np.arange(m) % 2).astype(np.int32)
    batch = make_batch(x, y, np.arange(m), m, np.array([1.0, 2.0]))
    state = create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(0))
    state = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, state)
    batch["x"] = batch["x"].astype(np.float64)
    key = jax.random.PRNGKey(1)
    loss_and_grad = jax.jit(jax.value_and_grad(make_batch_loss(model)))
    step = make_train_step(model)
    results = {}
    rows = slice(me * m // n_proc, (me + 1) * m // n_proc)
    meshes = {"all processes": DataParallel(jax.devices()), "one device": DataParallel(jax.local_devices()[:1])}
    for name, dp in meshes.items():
        s = dp.put_replicated(state)
        b = put_process_batch(dp, {k: v[rows] for k, v in batch.items()}) if name == "all processes" \
            else dp.put_batch(batch)
        loss, grads = loss_and_grad(s.params, b, key)
        new, metrics = step(s, b, key)
        results[name] = (float(_local(loss)), _local(grads), _local(new.params), float(_local(metrics["loss"])))

    def worst(a, b):
        return max(float(np.linalg.norm(np.asarray(u) - np.asarray(v)) / max(np.linalg.norm(np.asarray(v)), 1e-300))
                   for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    (loss_p, grads_p, params_p, step_p), (loss_1, grads_1, params_1, step_1) = results.values()
    report = {"process": me, "processes": n_proc, "global_devices": jax.device_count(),
              "local_rows": rows.stop - rows.start, "loss": loss_p, "loss_single": loss_1,
              "step_loss": step_p, "step_loss_single": step_1,
              "worst_grad_rel": worst(grads_p, grads_1), "worst_param_rel": worst(params_p, params_1)}
    print(json.dumps(report), flush=True)
    jax.distributed.shutdown()
    return report


def _local(tree):
    """This process's copy of replicated results (no communication)."""
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, *DISTRIBUTED)
    p.add_argument("--batch-size", type=positive_int, default=8, help="global minibatch (split evenly over processes)")
    deprecated_alias(p, "--batch", "--batch-size", "batch_size", type=positive_int)
    p.add_argument("--image-size", type=positive_int, default=20)
    return run_command(p, run, argv, _validate)


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.coordinator is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        p.error("argument --coordinator: required (this command checks a job of several processes)")


if __name__ == "__main__":
    main()
