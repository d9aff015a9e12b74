"""Fine-tuning step of the EfficientNet-Lite classifier: hand-written backward vs jax.grad vs PyTorch eager.

    python -m benchmarks.finetune_step [--variant efficientnet_lite1] [--size 240] [--batch 32]
                                       [--finetune top-maps top all] [--repeats 5] [--out runs/bench_finetune]

Per fine-tuning mode (``top``: the last ``--top-blocks`` MBConv blocks, the head convolution and the
classifier train; ``all``: every layer but the frozen BatchNorm statistics), with the packaged ImageNet
weights and a fresh 2-class head, on one batch of random photos:
- seconds per jitted Optax Adam step (``training.loop.steps.make_train_step``) with ``--grad manual``
  (``manual_backprop.efficientnet``, through a ``jax.custom_vjp``) and with ``jax.grad``, interleaved, each
  round starting with the next contender (the step that follows PyTorch's ran up to 2× slower, whichever
  it was);
- the same step in PyTorch eager (``benchmarks.torch_reference``, the same weights, Adam on the same
  tensors), interleaved with them, if torch is installed (``pip install -e '.[bench]'``);
- the fraction of this machine's float32 matmul ceiling (measured in the run) that the step reaches,
  counting the forward FLOPs plus twice those of the layers that train (their input and weight gradients).
Per layer type, at the shapes of the variant's top blocks and of its first stride-2 block: forward +
backward of the hand-written rule against ``jax.vjp`` of the Flax layer.

``top-maps``: the ``top`` step as ``--finetune top`` runs it by default (``--top-views``): on the frozen
blocks' cached activation maps, so only the trainable top runs forward and backward. Its peer is ``jax.grad``
of the same step (the PyTorch reference runs whole networks only), and the ``top`` rows of the same run show
what the cache saves.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.backbone_forward import forward_flops
from benchmarks.mlp_epoch import matmul_ceiling_gflops
from common.files import output_dir
from common.tables import write_table
from common.timing import device_description, time_interleaved
from manual_backprop import efficientnet as eff
from models.efficientnet_lite import DepthwiseConv, FrozenBatchNorm, PointwiseConv, block_specs
from models.pretrained import load_backbone, packaged_weights_file
from training.loop.config import get_config
from training.loop.registry import build_model
from training.loop.state import create_state
from training.loop.steps import make_batch, make_train_step
from training.transfer.features import make_block_input_fn


def _torch_step(variant: str, head: dict, finetune: str, top_blocks: int, x: np.ndarray, y: np.ndarray):
    """A PyTorch eager Adam step on the same network and weights; only the layers ``finetune`` names train."""
    import torch

    from benchmarks.torch_reference import torch_efficientnet_lite
    from models.torch_weights import load_state_dict

    state = dict(load_state_dict(packaged_weights_file(variant)))
    state["_fc.weight"], state["_fc.bias"] = np.asarray(head["kernel"]).T, np.asarray(head["bias"])
    n_blocks = len(block_specs(variant))
    top = tuple(f"_blocks.{i}." for i in range(n_blocks - top_blocks, n_blocks)) + ("_conv_head.", "_bn1.", "_fc.")
    tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}  # writable copies
    trains = [k for k in tensors if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
              and (finetune == "all" or k.startswith(top))]
    for k in trains:
        tensors[k].requires_grad_(True)
    forward = torch_efficientnet_lite(state, variant, tensors=tensors)
    opt = torch.optim.Adam([tensors[k] for k in trains], lr=1e-4)
    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(xt), yt)
        loss.backward()
        opt.step()
        return loss.detach().numpy()

    return step


def _trained_flops(variant: str, size: int, finetune: str, top_blocks: int, *, maps_only: bool = False) -> float:
    """Forward FLOPs per image + 2× those of the layers that train (input and weight gradients; ``top``).
    ``maps_only``: the top alone, 3× its FLOPs (the frozen blocks below it ran ahead, once)."""
    total = forward_flops(variant, size)
    if finetune == "all":
        return 3 * total
    specs = block_specs(variant)
    side = -(-size // 2)
    top_flops = 0
    for i, s in enumerate(specs):
        mid = s.c_in * s.expand
        out = -(-side // s.stride)
        f = 2 * (side * side * s.c_in * mid * (s.expand != 1) + out * out * mid * (s.kernel ** 2 + s.c_out))
        if i >= len(specs) - top_blocks:
            top_flops += f
        side = out
    top_flops += 2 * side * side * specs[-1].c_out * 1280
    return 3 * top_flops if maps_only else total + 2 * top_flops


def step_rows(variant: str, size: int, batch: int, modes: list[str], top_blocks: int, repeats: int,
              ceiling: float) -> tuple[list[dict], str]:
    backbone, _ = load_backbone(variant)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    y = (np.arange(batch) % 2).astype(np.int32)
    b = jax.tree_util.tree_map(jnp.asarray, make_batch(x, y, np.arange(batch), batch, np.ones(2, np.float32)))
    try:
        import torch

        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_info = "torch not installed: no PyTorch peer measured"
    rows = []
    start = len(block_specs(variant)) - top_blocks
    for mode in modes:
        finetune = "top" if mode == "top-maps" else mode
        config = get_config(model=variant, finetune=finetune, top_blocks=top_blocks, image_size=size,
                            learning_rate=1e-4, batch_size=batch, recipe=False)
        model = build_model(config, 2)
        state0 = create_state(model, config, (size, size, 3), key=jax.random.PRNGKey(0), backbone=backbone)
        batch_in = b
        if mode == "top-maps":  # the frozen blocks' maps, computed once (as cached): the top alone runs
            model = model.clone(start_block=start)
            maps = make_block_input_fn(variant, start)({k: v for k, v in backbone.items() if k != "fc"}, b["x"])
            batch_in = {**b, "x": maps[:, 0]}
        fns, states = {}, {}
        for grad in ("manual", "autodiff"):
            step = make_train_step(model, grad=grad, finetune=finetune, top_blocks=top_blocks)
            states[grad] = state0

            def call(step=step, grad=grad, batch_in=batch_in):
                states[grad], m = step(states[grad], batch_in, jax.random.PRNGKey(0))
                return m["loss"]

            fns[f"jax, --grad {grad}"] = call
        if not torch_info.startswith("torch not") and mode != "top-maps":
            fns["pytorch eager"] = _torch_step(variant, jax.device_get(state0.params["head"]), finetune, top_blocks,
                                               x, y)
        times = time_interleaved(fns, repeats=repeats, rotate=True)
        flops = _trained_flops(variant, size, finetune, top_blocks, maps_only=mode == "top-maps") * batch
        auto, ref = times["jax, --grad autodiff"][1], times.get("pytorch eager", (None, None))[1]
        for name, (best, median) in times.items():
            rows.append({"finetune": mode, "step": name, "s/step (best)": best, "s/step (median)": median,
                         "vs autodiff (median)": median / auto,
                         "PyTorch / this (median)": (ref / median) if ref else "",
                         "fraction of matmul ceiling": flops / best / 1e9 / ceiling})
    return rows, torch_info


def _layer_cases(variant: str, size: int) -> list[tuple[str, str, tuple, dict]]:
    """(layer type, shape label, input shape per image, layer args) at the top blocks' and the first
    stride-2 block's shapes."""
    specs = block_specs(variant)
    side, cases = -(-size // 2), []
    for i, s in enumerate(specs):
        mid = s.c_in * s.expand
        out = -(-side // s.stride)
        if (s.stride == 2 and not any(c[0] == "depthwise" for c in cases)) or i == len(specs) - 1:
            cases += [("depthwise", f"{side}²×{mid}, {s.kernel}×{s.kernel}/{s.stride}", (side, side, mid),
                       {"k": s.kernel, "stride": s.stride}),
                      ("pointwise", f"{out}²×{mid}→{s.c_out}", (out, out, mid), {"c_out": s.c_out}),
                      ("batchnorm", f"{out}²×{mid}", (out, out, mid), {}),
                      ("relu6", f"{out}²×{mid}", (out, out, mid), {})]
        side = out
    return cases


def layer_rows(variant: str, size: int, batch: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for kind, label, shape, kw in _layer_cases(variant, size):
        x = jnp.asarray(rng.uniform(-1, 7, (batch, *shape)), jnp.float32)
        c = shape[-1]
        if kind == "depthwise":
            module, k, s = DepthwiseConv(kw["k"], kw["stride"]), kw["k"], kw["stride"]
            p = {"kernel": jnp.asarray(rng.normal(size=(k, k, 1, c)), jnp.float32)}

            def manual(p, x, d, s=s):
                return eff.depthwise_backward(d, x, p["kernel"], s)

            def forward(p, xi, s=s):
                return eff.depthwise_forward(p["kernel"], xi, s)[0]
        elif kind == "pointwise":
            module = PointwiseConv(kw["c_out"])
            p = {"kernel": jnp.asarray(rng.normal(size=(1, 1, c, kw["c_out"])), jnp.float32)}

            def manual(p, x, d):
                return eff.pointwise_backward(d, x, p["kernel"])

            def forward(p, xi):
                return eff.pointwise_forward(p["kernel"], xi)[0]
        elif kind == "batchnorm":
            module = FrozenBatchNorm()
            p = {k: jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32) for k in ("scale", "bias", "mean", "var")}

            def manual(p, x, d):
                return eff.batchnorm_backward(d, x, p)

            def forward(p, xi):
                return eff.batchnorm_forward(p, xi)[0]
        else:
            module, p = None, {}

            def manual(p, x, d):
                return eff.relu6_backward(d, x), {}

            def forward(p, xi):
                return eff.relu6_forward(xi)[0]

        def flax_fwd(p, xi, module=module):
            return jax.nn.relu6(xi) if module is None else module.apply({"params": p}, xi)

        d = jnp.ones(jax.eval_shape(jax.vmap(flax_fwd, in_axes=(None, 0)), p, x).shape, jnp.float32)
        def autodiff(p, x, d, f=flax_fwd):
            out, pullback = jax.vjp(jax.vmap(f, in_axes=(None, 0)), p, x)
            return out, pullback(d)

        def by_hand(p, x, d, f=forward, b=manual):
            return jax.vmap(f, in_axes=(None, 0))(p, x), b(p, x, d)

        auto, hand = jax.jit(autodiff), jax.jit(by_hand)
        t = time_interleaved({"manual": lambda: hand(p, x, d), "autodiff": lambda: auto(p, x, d)}, repeats=repeats)
        rows.append({"layer": kind, "shape": f"{label}, batch {batch}", "manual ms": 1e3 * t["manual"][1],
                     "jax.vjp ms": 1e3 * t["autodiff"][1], "manual / jax.vjp": t["manual"][1] / t["autodiff"][1]})
    return rows


def run(variant: str, size: int, batch: int, modes: list[str], top_blocks: int, repeats: int, out: str
        ) -> list[dict]:
    ceiling = matmul_ceiling_gflops()
    rows, torch_info = step_rows(variant, size, batch, modes, top_blocks, repeats, ceiling)
    layers = layer_rows(variant, size, batch, repeats)
    notes = (f"{variant} at {size} px, batch {batch}, float32, Adam, top = last {top_blocks} blocks + head conv + "
             f"classifier. Device: {device_description()}; {torch_info}. Matmul ceiling measured in this run: "
             f"{ceiling:.0f} GFLOP/s. Medians of {repeats} interleaved steps.\n")
    path = output_dir(out)
    write_table(rows, path, "finetune_step", title="Fine-tuning step: hand-written backward, jax.grad, PyTorch",
                notes=notes)
    write_table(layers, path, "finetune_layers", title="Backward per layer type: hand-written vs jax.vjp",
                notes=f"Forward + backward (input and parameter gradients), median of {repeats} interleaved runs.\n")
    print((path / "finetune_step.md").read_text())
    print((path / "finetune_layers.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="efficientnet_lite1")
    p.add_argument("--size", type=int, default=240)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--finetune", nargs="+", default=["top-maps", "top", "all"], choices=["top-maps", "top", "all"])
    p.add_argument("--top-blocks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6, help="rounds; each contender starts 1/3 of them (default 6)")
    p.add_argument("--out", default="runs/bench_finetune")
    args = p.parse_args(argv)
    run(args.variant, args.size, args.batch, args.finetune, args.top_blocks, args.repeats, args.out)


if __name__ == "__main__":
    main()
