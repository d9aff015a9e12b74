"""The lab's results table, reproduced honestly: scenarios × image sizes × {lab-2020, improved, pretrained}.

    python -m experiments.results_table --data DIR_OR_CSV --out reports/NAME \\
        [--scenario Pr_Im PrPo_Im Pr_PoIm Pr_Po_Im] [--image-size 108 224] [--configs lab-2020 improved pretrained] \\
        [--grouping FILE ...] [--rgb] [--model model1] [--max-epochs N]

Every row: the lab's columns (Prec., Recall — of the named positive class — and Acc.) plus
balanced accuracy, macro-F1, ROC-AUC (two classes), the majority-class baseline, mean ± std over
folds, training seconds, and whether the row beats the baseline. Writes results.{md,csv} and a
confusion-matrix PNG per row; each finished row is saved under rows/, so a re-run skips it.
``--grouping`` files replace the scenarios (e.g. tree vs not_a_tree). A row whose classes are
too small to split is reported as such, not trained. As N processes (--coordinator …, README
"Scaling"), each row's features are computed by shard of photos and its networks train
data-parallel; process 0 writes the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.cli import DISTRIBUTED, add_common, deprecated_alias, image_size, positive_int, run_command
from experiments.names import SCENARIOS, TABLE_CONFIGS

COLUMNS = ["classes", "size", "config", "positive class", "Prec.", "Recall", "Acc.", "Bal. acc.", "Bal. acc. 95% CI",
           "Macro-F1",
           "ROC-AUC", "calibration", "ECE [95% CI] (bins)", "Brier [95% CI]", "log-loss [95% CI]",
           "Majority acc.", "Majority bal. acc.", "Majority macro-F1", "beats majority?", "folds",
           "train s", "n images"]


def run(args: argparse.Namespace) -> list[dict]:
    from common.files import output_dir
    from training.loop.distributed import outputs_of_this_process, process_index

    with outputs_of_this_process(args.out) as out:  # process 0 writes; the others compute alongside it
        rows = _run(args, output_dir(out))
    if process_index() == 0:
        out = Path(args.out)
        print(f"{len(rows)} rows: table {out / 'results.md'} (and .csv), one confusion matrix per row "
              f"({out}/confusion_*.png), each row's runs under {out / 'runs'}")
    return rows


def _run(args: argparse.Namespace, out: Path) -> list[dict]:
    import jax

    from common.files import write_json_atomic
    from common.tables import write_table
    from common.timing import device_description
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess
    from training.evaluation.metrics import bootstrap_interval
    from training.loop.distributed import from_process_0, process_index
    from training.runs.folds import pooled_predictions, run_folds
    from training.runs.report import plot_confusion
    from training.runs.results import CONFIGS, config_for, describe, read_result_row, table_row

    if args.grouping:
        groupings = [("grouping", g) for g in args.grouping]
    else:
        groupings = [("scenario", s) for s in args.scenario]
    grid = [(g, size, cfg) for g in groupings for size in args.image_size for cfg in args.configs]
    rows = []
    loaded: dict = {}
    for i, ((kind, group), size, cfg_name) in enumerate(grid, start=1):
        overrides = {"model": args.model} if cfg_name != "pretrained" else {}
        if args.max_epochs and "epochs" in CONFIGS[cfg_name]:
            overrides["epochs"] = min(CONFIGS[cfg_name]["epochs"], args.max_epochs)
        config = config_for(cfg_name, size, rgb=args.rgb, seed=args.seed, **overrides)
        key = f"{Path(group).stem}-{config.image_size}-{cfg_name}"
        if any(r.get("_key") == key for r in rows):
            continue  # the pretrained row runs at its backbone's size, once
        row_file = out / "rows" / f"{key}.json"
        if from_process_0(row_file.exists()):  # process 0 holds the rows: every process skips the same ones
            rows.append(read_result_row(row_file, key) if process_index() == 0 else {"_key": key})
            print(f"[{i}/{len(grid)}] {key}: done earlier, skipped")
            continue
        print(f"[{i}/{len(grid)}] {key}")
        cache_key = (kind, group, config.image_size, config.rgb)
        if cache_key not in loaded:
            loaded[cache_key] = load_dataset(
                args.data, Preprocess(config.image_size, "center", config.rgb),
                scenario=group if kind == "scenario" else None, grouping_file=group if kind == "grouping" else None,
                skip_bad=args.skip_bad, cache_dir=args.cache_dir, progress=False)
        data = loaded[cache_key]
        row = {"_key": key, "classes": " vs ".join(data.class_names), "size": config.image_size, "config": cfg_name,
               "n images": len(data.y)}
        try:
            results = run_folds(data, config, out / "runs" / key, progress=not args.no_progress,
                                cache_dir=args.cache_dir, engine=args.engine)
        except ValueError as exc:  # e.g. too few images per class to split
            row.update({"positive class": data.class_names[0], "beats majority?": f"not run: {exc}"})
        else:
            stats = table_row(results, data.class_names)
            stats.pop("_stats")
            confusion = stats.pop("confusion (summed over folds)")
            row.update(stats)
            y_true, y_pred = pooled_predictions(results, data.y)
            lo, hi = bootstrap_interval(y_true, y_pred, key=jax.random.PRNGKey(args.seed))
            row["Bal. acc. 95% CI"] = f"{100 * lo:.1f}–{100 * hi:.1f}"
            row.update(_calibration_columns(results, data.y, args.seed, out / f"reliability_{key}.png", key))
            row["settings"] = describe(config)
            plot_confusion(confusion, data.class_names, out / f"confusion_{key}.png",
                           f"{key} (summed over {len(results)} fold(s))")
        write_json_atomic(row_file, row)
        rows.append(row)
        shown = ("Acc.", "Bal. acc.", "Macro-F1", "beats majority?")
        print("    " + ", ".join(f"{k} {row.get(k, '')}" for k in shown))
    notes = (f"Data: {args.data}. Model: {args.model} (pretrained: EfficientNet-Lite1). Device: "
             f"{device_description()}. Prec./Recall are those of the positive class. lab-2020: grayscale, Model 1, "
             "Adam 1e-3, 4 epochs, batch 32, one seeded stratified 80:20 split, the 4th epoch scored. improved: "
             "5-fold stratified CV (mean ± std), augmentation, balanced class weights, standardized inputs, "
             "Adam 1e-4 with cosine decay, best epoch and early stopping (patience 6) on an inner split of each "
             f"training fold{', RGB' if args.rgb else ''}. pretrained: 5-fold CV, ImageNet EfficientNet-Lite1 "
             "features (frozen, flip-averaged), softmax head whose L2 and step count are chosen by 4-fold CV inside "
             "each training fold. Every validation fold is scored once; the interval is a bootstrap over all scored "
             "images, resampled within each class. Calibration (improved, pretrained): fitted on inner predictions "
             "of each training part (the head's inner out-of-fold ones, Model 1's inner validation split); ECE on "
             "equal-mass bins of ≥ 40 photos (their count in brackets), of the probability of each decision; Brier "
             "is ½ Σ_k (q_k − y_k)², the usual (q − y)² for two classes; intervals are stratified bootstraps. "
             "\"beats majority?\" "
             "compares balanced accuracy and macro-F1 with always answering the "
             "training set's majority class.\n")
    write_table(rows, out, "results", title="Results table", notes=notes, columns=COLUMNS)
    print((out / "results.md").read_text())
    return rows


def _calibration_columns(results, y, seed: int, png: Path, title: str) -> dict:
    """The pooled scored photos' calibration (the decision's probability: ECE with its bins, Brier, log-loss, each
    with a stratified bootstrap interval) as table cells, and their reliability diagram."""
    import jax

    from training.evaluation.calibration import calibration_metrics
    from training.runs.folds import pooled
    from training.runs.report import plot_reliability

    p = pooled(results, y)
    m = calibration_metrics(p.probs, p.y, y_pred=p.y_pred, key=jax.random.PRNGKey(seed))
    plot_reliability(p.probs, p.y, png, title, p.y_pred)
    chosen = sorted({r.calibration["method"] for r in results if r.calibration})
    requested = next((r.calibration["requested"] for r in results if r.calibration), "none")

    def cell(k):
        return f"{m[k]:.3f} [{m[k + '_ci95'][0]:.3f}, {m[k + '_ci95'][1]:.3f}]"

    return {"calibration": requested + (f" ({'/'.join(chosen)})" if requested == "auto" else ""),
            "ECE [95% CI] (bins)": f"{cell('ece')} ({m['ece_bins']})",
            "Brier [95% CI]": cell("brier"), "log-loss [95% CI]": cell("log_loss")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "skip-bad", "cache-dir", "no-progress", "engine", *DISTRIBUTED,
               out="reports/results",
               data_required=True)
    p.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=sorted(SCENARIOS),
                   help="the lab's label groupings, one set of rows each (default all four)")
    deprecated_alias(p, "--scenarios", "--scenario", "scenario", nargs="+", choices=sorted(SCENARIOS))
    p.add_argument("--grouping", nargs="+", help="grouping files to use instead of the scenarios")
    p.add_argument("--image-size", nargs="+", type=image_size, default=[108, 224],
                   help="square sides in pixels, one row each (default 108 224)")
    deprecated_alias(p, "--sizes", "--image-size", "image_size", nargs="+", type=image_size)
    p.add_argument("--configs", nargs="+", default=list(TABLE_CONFIGS), choices=sorted(TABLE_CONFIGS),
                   help="lab-2020 (the lab's 2020 setup), improved (Model 1 from scratch, done well), pretrained "
                        "(the default: frozen EfficientNet-Lite1 and a head); default all three")
    p.add_argument("--rgb", action="store_true", help="improved configuration in colour")
    p.add_argument("--model", default="model1", choices=["model1", "resnet50", "googlenet"],
                   help="the network of the lab-2020 and improved rows")
    p.add_argument("--max-epochs", type=positive_int, help="cap every configuration's epochs (for quick runs)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
