"""Export a trained run as one ONNX file that runs without JAX or this project (a phone, a web page, C#, Java, …).

    python -m experiments.export --checkpoint runs/NAME --out model.onnx [--overwrite]

The file holds the whole classifier (backbone and head, or Model 1) with the run's best parameters;
input ``image`` float32 (N, H, W, C) in [0, 1], output ``probabilities`` (N, classes). Its metadata
(``metadata_props``) says how to make the input and read the output: image size, layout, value range,
channels, crop, class names, flip averaging and the saved decision threshold (``--target-recall``).
Needs ``onnx`` (``pip install -e '.[deploy]'``); ONNX Runtime runs the file. ResNet-50 and GoogLeNet runs
are refused, naming the model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.cli import DISTRIBUTED, add_common, run_command


def export_metadata(config, class_names: list[str], op: dict | None) -> dict[str, str]:
    """What a user of the file needs besides the graph, as strings (ONNX ``metadata_props``)."""
    return {
        "input": "image: float32 (N, H, W, C), NHWC, RGB (C = 3) or ITU-R 601 luma (C = 1), values in [0, 1]",
        "image_size": str(config.image_size),
        "channels": "3" if config.rgb else "1",
        "preprocessing": (f"decode, apply the EXIF orientation, {'take the largest centred square' if config.crop == 'center' else 'use the whole photo (squashed)'}, "  # noqa: E501
                          f"bicubic resize to {config.image_size}×{config.image_size}, divide by 255"),
        "output": "probabilities: float32 (N, classes), softmax" + (
            "; the mean of the image's and its mirror image's" if (config.pretrained and config.tta_flip) else ""),
        "class_names": json.dumps(class_names),
        "decision": (json.dumps({"class": op["class"], "class_index": op["class_index"], "threshold": op["threshold"],
                                 "rule": "predict this class when its probability ≥ threshold, else the most "
                                         "probable other class"}) if op else "the most probable class"),
        "model": config.model + (f" (finetune {config.finetune})" if config.pretrained else ""),
        "producer": "tree-risk-jax experiments.export",
    }


def run(args: argparse.Namespace) -> dict:
    from common.files import atomic_open, check_destination
    from training.loop.distributed import process_index

    if process_index() != 0:  # one small file: process 0 writes it, the others have nothing to do
        return {"out": None, "classes": None}
    out = Path(args.out)
    check_destination(out)  # a link, FIFO or folder at --out: refused before any work
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it (or choose another --out)")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError("experiments.export needs the onnx package: pip install -e '.[deploy]'") from None
    from models.onnx_graph import classifier_to_onnx
    from training.runs.saved import load_trained, read_saved_run

    saved = read_saved_run(args.checkpoint)  # the run is read once, here
    model, params, config, class_names = load_trained(saved)
    op = saved.operating_point.as_json() if saved.operating_point else None
    proto = classifier_to_onnx(model, params, image_size=config.image_size, channels=3 if config.rgb else 1,
                               tta_flip=config.pretrained and config.tta_flip,
                               metadata=export_metadata(config, class_names, op))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as f:
        f.write(proto.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {config.model}, {len(class_names)} classes, "
          f"input (N, {config.image_size}, {config.image_size}, {3 if config.rgb else 1}) in [0, 1]")
    return {"out": str(out), "classes": class_names}


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
