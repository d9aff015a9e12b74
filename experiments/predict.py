"""Predict with a trained run on new photos: one CSV row per image, streamed in bounded memory.

    python -m experiments.predict --checkpoint runs/NAME --images DIR --out predictions.csv [--resume]
    python -m experiments.predict --checkpoint runs/NAME --images photo.jpg DIR2 other.png

Columns: path, predicted label, then one probability column per class (p_<class>), calibrated as the run
was (its saved calibration), and ``refer`` (1: send the photo to a person) when the run saved a referral
threshold or with --refer FRACTION (the least confident FRACTION of these photos). The path of a
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
import sys

from experiments.cli import DISTRIBUTED, add_common, fraction, positive_int, run_command


def run(args: argparse.Namespace) -> dict:
    from training.runs.predict import PredictOptions, predict_photos

    options = PredictOptions(resume=args.resume, overwrite=args.overwrite, skip_bad=args.skip_bad, refer=args.refer,
                             batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                             engine=args.engine)
    report = predict_photos(args.checkpoint, args.images, args.out, options)
    for _, reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    out, index, count = report.out, report.process_index, report.process_count
    where = out if count == 1 else f"shard {index} of {count} of {out}" + (" (joined into it)" if index == 0 else "")
    print(f"{report.rows} predictions written to {where}"
          + (f" ({report.resumed} from the interrupted run)" if report.resumed else "")
          + (f"; {len(report.skipped)} bad files skipped" if report.skipped else "")
          + (f"; {len(report.ignored)} entries left out (not photos: "
             f"{', '.join(sorted({r for _, r in report.ignored}))})" if report.ignored else "")
          + (f"; {report.referred} of {report.referral_rows} referred to a person ({report.referral_rule}; "
             "column refer)" if report.referred is not None else ""))
    return {"rows": report.rows, "referred": report.referred, "skipped": report.skipped, "ignored": report.ignored,
            "out": out}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--images", required=True, nargs="+", metavar="PHOTO_OR_DIR",
                   help="photo files and folders of photos (read recursively), in any mix")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (default predictions.csv)")
    add_common(p, "skip-bad", "workers", "no-progress", "engine", *DISTRIBUTED)
    p.add_argument("--resume", action="store_true", help="continue an interrupted prediction into --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (or its partial file)")
    p.add_argument("--refer", type=fraction, metavar="FRACTION",
                   help="mark the least confident FRACTION of the photos for a person (column refer), instead of "
                        "the run's saved confidence threshold")
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
