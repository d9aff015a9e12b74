"""Predict with a trained run on new photos: one CSV row per image, streamed in bounded memory.

    python -m experiments.predict --checkpoint runs/NAME --images DIR --out predictions.csv [--resume]
    python -m experiments.predict --checkpoint runs/NAME --images photo.jpg DIR2 other.png

Columns: path, predicted label, then one probability column per class (p_<class>). The path of a
photo found in a folder given to --images is relative to that folder (siteA/IMG_1.jpg), as
experiments.agreement matches it; a photo file given directly keeps the path as given. Two
different photos that would get the same path are refused: give their common folder.

A run trained with --target-recall predicts its class whenever that class's probability reaches
the saved threshold; a pretrained model averages each
photo with its mirror image, as in training. On CPU, with the ``deploy`` extra installed, ONNX Runtime
computes the probabilities from the run's ONNX graph (``--engine``); the results equal JAX's to 1e-4.

Every file under each DIR (recursively; hidden entries and .md/.txt/.csv/.json/.toml files are left
out and counted) gets its row, byte-identical copies included. Photos are decoded by a thread
pool a few chunks ahead of the device, each chunk sharded over all local devices, so memory
does not grow with the folder. Rows are appended to OUT.partial as chunks finish; after an
interruption, --resume continues where it stopped, after checking every row already written
against the folder's listing (a partial file that fails is one line naming it, never merged). OUT
appears (renamed into place) only when complete; an existing OUT is replaced only with --overwrite
(--resume never replaces a finished one). A symbolic link, FIFO or device at OUT or its partial
files is refused before any work. A path or label that a spreadsheet would read as a formula
(beginning with = + - @) is written with a leading apostrophe (SECURITY.md, "the CSV rule"). An
unreadable photo stops the run naming it, or with --skip-bad is listed on stderr and counted.

As N processes (--coordinator HOST:PORT --num-processes N --process-id I, or a scheduler's
environment; README "Scaling"): each predicts a contiguous shard of the sorted files into
OUT.shard-I-of-N (with its own partial file and --resume), and process 0 joins the shards into
OUT when all are complete, each row checked: the same bytes as one process writes. Before any
work the processes compare a fingerprint of their plan (files, batch size, model, options): a
job whose processes were given different flags stops with one line on each. OUT must be on a
file system every process sees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from experiments.cli import DISTRIBUTED, add_common, positive_int, run_command


def images_signature(images: list[str]) -> str:
    """What --images names, as a resumed run's partial file records it (one folder: its absolute path)."""
    resolved = [str(Path(i).resolve()) for i in images]
    return resolved[0] if len(resolved) == 1 else json.dumps(resolved)


def run(args: argparse.Namespace) -> dict:
    from training.data.images import photo_inputs
    from training.inference.engine import trained_classifier
    from training.inference.stream import PartialCSV, StreamOptions, predict_sharded, shard_path
    from training.loop.distributed import process_count, process_index
    from training.runs.saved import load_trained, read_saved_run

    out = Path(args.out)
    count, index = process_count(), process_index()
    # this process's partial output: of OUT, or of its shard of OUT in a job of several processes (only its paths
    # are used here; predict_folder writes it)
    partial = PartialCSV(out if count == 1 else shard_path(out, index, count), [], {})
    partial.check_destinations()  # a link, FIFO, device or folder at OUT or a partial file: refused before any work
    mine = partial.out  # this process's output: OUT, or its complete shard
    if args.overwrite:
        pass  # discarded once the run is loaded
    elif partial.exists() and not args.resume:
        raise FileExistsError(f"an interrupted prediction into {out} exists ({partial.path}): pass --resume to "
                              "continue it or --overwrite to start again")
    elif os.path.lexists(out) and not args.resume:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it (or choose another --out)")
    elif os.path.lexists(out) and not partial.exists() and (count == 1 or not os.path.lexists(mine)):
        raise FileExistsError(f"{out} is complete and there is no interrupted prediction into it to resume "
                              f"({partial.path}): --resume never replaces it; pass --overwrite to predict again")
    saved = read_saved_run(args.checkpoint)  # the run is read once, here
    model, params, config, class_names = load_trained(saved)
    op = saved.operating_point.as_json() if saved.operating_point else None
    classifier, engine = trained_classifier(model, params, config, class_names, op, args.engine)
    signature = {"checkpoint": str(Path(args.checkpoint).resolve()), "images": images_signature(args.images),
                 "checkpoint_config_sha256": saved.sha256}
    if args.overwrite:
        partial.discard()
    ignored: list[tuple[str, str]] = []
    photos = photo_inputs(args.images, ignored=ignored)
    files, names = [f for f, _ in photos], dict(photos)
    out.parent.mkdir(parents=True, exist_ok=True)
    if op:
        print(f"operating point: {op['class']} when its probability ≥ {op['threshold']:.4f}"
              + (f" (chosen for recall ≥ {op['target_recall']:g})" if "target_recall" in op else ""))
    options = StreamOptions(batch_size=args.batch_size or config.batch_size, workers=args.workers,
                            resume=args.resume, skip_bad=args.skip_bad, progress=not args.no_progress)
    report = predict_sharded(files, None, classifier, out, signature=signature, options=options,
                             overwrite=args.overwrite, names=names)
    for path, reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    n_rows = report.predicted + report.resumed
    where = str(out) if count == 1 else f"shard {index} of {count} of {out}" + (" (joined into it)" if index == 0
                                                                                 else "")
    print(f"{n_rows} predictions written to {where}"
          + (f" ({report.resumed} from the interrupted run)" if report.resumed else "")
          + (f"; {len(report.skipped)} bad files skipped" if report.skipped else "")
          + (f"; {len(ignored)} entries left out (not photos: {', '.join(sorted({r for _, r in ignored}))})"
             if ignored else ""))
    return {"rows": n_rows, "skipped": report.skipped, "ignored": ignored, "out": str(out)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--images", required=True, nargs="+", metavar="PHOTO_OR_DIR",
                   help="photo files and folders of photos (read recursively), in any mix")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (default predictions.csv)")
    add_common(p, "skip-bad", "workers", "no-progress", "engine", *DISTRIBUTED)
    p.add_argument("--resume", action="store_true", help="continue an interrupted prediction into --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (or its partial file)")
    p.add_argument("--batch-size", type=positive_int,
                   help="photos per forward pass (default: the run's), rounded up to a multiple of the devices")
    return p


def main(argv: list[str] | None = None) -> dict:
    return run_command(parser(), run, argv, _validate)


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.resume and args.overwrite:
        p.error("argument --resume: not allowed with --overwrite (one continues, the other starts again)")


if __name__ == "__main__":
    main()
