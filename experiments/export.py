"""Export a trained run as one ONNX file that runs without JAX or this project (a phone, a web page, C#, Java, …).

    python -m experiments.export --checkpoint runs/NAME --out model.onnx [--overwrite]

The file holds the whole classifier (backbone and head, or Model 1) with the run's best parameters;
input ``image`` float32 (N, H, W, C) in [0, 1], output ``probabilities`` (N, classes). Its metadata
(``metadata_props``) says how to make the input and read the output: image size, layout, value range,
channels, crop, class names, flip averaging, the calibration (inside the graph: the output is the calibrated
probabilities, equal to experiments.predict's), the saved decision threshold (``--target-recall``) and the
referral threshold.
Needs ``onnx`` (``pip install -e '.[deploy]'``); ONNX Runtime runs the file. ResNet-50 and GoogLeNet runs
are refused, naming the model.
"""

from __future__ import annotations

import argparse

from experiments.cli import DISTRIBUTED, add_common, run_command


def run(args: argparse.Namespace) -> dict:
    from training.runs.export import ExportOptions, export_onnx

    report = export_onnx(args.checkpoint, args.out, ExportOptions(overwrite=args.overwrite))
    if report.out is not None:
        size = report.image_size
        print(f"wrote {report.out} ({report.size_bytes / 1e6:.1f} MB): {report.model}, {len(report.classes)} classes, "
              f"input (N, {size}, {size}, {report.channels}) in [0, 1]")
    return {"out": report.out, "classes": report.classes}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--out", default="model.onnx", help="the ONNX file to write (default model.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_common(p, "no-progress", *DISTRIBUTED)
    return p


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
