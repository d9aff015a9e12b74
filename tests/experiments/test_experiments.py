"""The command-line experiments run end to end and write their tables and plots."""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from common.tables import markdown_table
from tests.conftest import shared_path
from tests.helpers import read_predictions
from training.data.arrays import load_mnist_npz


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_markdown_table_formats_rows():
    text = markdown_table([{"a": 1, "b": 0.5}, {"a": 2, "b": 1e-9}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.5 |", "| 2 | 1.000e-09 |"]


def test_train_mlp_on_digits_writes_report(tmp_path):
    from training.loop.mlp import MlpOptions, train_mlp

    summary = train_mlp(None, tmp_path, MlpOptions(epochs=3, progress=False)).summary()
    for name in ("history.md", "history.csv", "summary.md", "summary.csv", "learning_curve.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    history = read_csv(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert 0.5 < summary["final_test_accuracy"] <= 1.0


def compiled_dot_count(fn, L: int, width: int = 8, batch: int = 4) -> int:
    import jax
    import jax.numpy as jnp

    import manual_backprop as mb

    params = mb.init_mlp(jax.random.PRNGKey(0), [width] * (L + 1))
    X, Y = jnp.ones((batch, width)), jnp.ones((batch, width))
    return fn.lower(params, X, Y).compile().as_text().count(" dot(")


def test_naive_chain_work_grows_quadratically_and_backprop_linearly():
    """Counted, not timed: matrix products in the compiled programs as depth doubles."""
    from training.evaluation.gradients import depth_gradient_functions

    fns = depth_gradient_functions()
    naive = [compiled_dot_count(fns["naive chain"], L) for L in (4, 8, 16)]
    cached = [compiled_dot_count(fns["cached backprop"], L) for L in (4, 8, 16)]
    assert naive[2] / naive[1] > 3.0 and naive[1] / naive[0] > 2.5  # ≈ 4× per doubling
    assert cached[2] / cached[1] < 2.2 and cached[1] / cached[0] < 2.2  # ≈ 2× per doubling


def test_backprop_depth_writes_its_table_and_plot(tmp_path):
    from training.evaluation.gradients import DEPTH_METHODS
    from training.runs.gradients import DepthOptions, backprop_depth

    result = backprop_depth(tmp_path, DepthOptions(depths=(2, 4, 8), width=16, batch_size=8, repeats=2))
    assert (tmp_path / "depth_timings.png").stat().st_size > 0
    rows = read_csv(tmp_path / "depth_timings.csv")
    assert [int(r["depth_L"]) for r in rows] == [2, 4, 8]
    assert all(float(r["naive chain ms"]) > 0 for r in rows)
    assert set(result.deep_slopes) == set(DEPTH_METHODS)


@pytest.mark.slow
def test_compare_gradients_errors_are_tiny_in_float64(tmp_path):
    from training.evaluation.gradients import CONTROL
    from training.runs.gradients import GradientOptions, compare_gradients

    one = {"3-2-3-5": [3, 2, 3, 5]}
    result = compare_gradients(tmp_path, GradientOptions(quick=True, architectures=one, timed=one))
    assert result.worst_float64 <= 1e-12
    assert result.worst_float32 <= 1e-4
    rows = read_csv(tmp_path / "gradient_errors.csv")
    assert len(rows) == 16  # 4 activations × 4 costs
    assert (tmp_path / "gradient_comparison.png").stat().st_size > 0
    timings = {r["method"]: r for r in read_csv(tmp_path / "gradient_timings.csv")}
    assert set(timings) == {"manual (matrix)", "manual (vmap)", "jax.grad", CONTROL,
                            "naive chain (vmap)"}
    assert float(timings["jax.grad"]["ratio_vs_jax_grad"]) == 1.0
    assert all(float(r["ms"]) > 0 and int(float(r["calls per sample"])) >= 10 for r in timings.values())


def test_mnist_loader_reads_the_shared_file():
    data = load_mnist_npz(shared_path("mnist.npz"))
    assert data.train.x.shape == (50_000, 784) and data.test.x.shape == (10_000, 784)
    assert data.train.x.dtype == np.float32 and data.train.x.max() == np.float32(255 / 256)
    assert set(np.unique(data.test.y)) == set(range(10))


def test_mnist_loader_names_the_bad_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npz: missing arrays \['y_train'"):
        load_mnist_npz(bad)
    wrong = tmp_path / "wrong.npz"
    arrays = {f"{k}_{p}": np.zeros((2, 28, 28) if k == "x" else (2,), np.uint8)
              for p in ("train", "valid", "test") for k in ("x", "y")}
    arrays["x_test"] = np.zeros((2, 27, 28), np.uint8)
    np.savez(wrong, **arrays)
    with pytest.raises(ValueError, match=r"wrong\.npz: x_test must be \(n, 28, 28\)"):
        load_mnist_npz(wrong)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="garbage.npz: not a readable .npz"):
        load_mnist_npz(garbage)


@pytest.mark.slow
def test_default_train_and_predict_on_real_tree_photos(tmp_path):
    """End to end on ../shared/data/trees (406 real photos, mixed formats), tree vs not_a_tree, with no flag
    but the data: the pretrained default beats the majority answer by a wide margin on a fold it never chose on."""
    import json

    from experiments import predict, train

    trees = shared_path("trees")
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    argv = ["--data", str(trees), "--grouping", str(repo / "examples" / "tree_vs_not.toml"),
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    result = train.run(train.parser().parse_args(argv))
    assert result.config.model == "efficientnet_lite1" and result.config.finetune == "head"
    report = json.loads((out / "data_report.json").read_text())
    assert report["found"] == 406 and report["loaded"] == 406 and not report["skipped"]  # nothing dropped
    assert report["class_counts"] == {"tree": 315, "not_a_tree": 91}
    for name in ("metrics.md", "metrics.csv", "history.csv", "head_selection.png", "confusion_matrix.png",
                 "summary.md"):
        assert (out / name).stat().st_size > 0, name
    run = result.results[0]
    metrics = run.metrics
    assert metrics.n == 81 and run.baseline.balanced_accuracy == 0.5
    # measured 0.78 on this split (5-fold CV: 0.79-0.82); Model 1 from scratch: 0.50-0.65
    assert metrics.balanced_accuracy > 0.70
    lo, hi = result.balanced_accuracy_ci95
    assert lo < metrics.balanced_accuracy < hi
    predict.main(["--checkpoint", str(out), "--images", str(shared_path("tree-risk-examples")), "--out",
                  str(tmp_path / "p.csv"), "--no-progress"])
    rows = read_predictions(tmp_path / "p.csv")
    assert len(rows) == 4 and {r["predicted"] for r in rows} <= {"tree", "not_a_tree"}
    assert sum(r["predicted"] == "tree" for r in rows) >= 3  # field photos of trees
    for r in rows:
        assert abs(r["p_tree"] + r["p_not_a_tree"] - 1.0) < 1e-5
    # a second run reads the cached features: the same figures
    again = train.run(train.parser().parse_args([*argv[:4], "--out", str(tmp_path / "again"), *argv[6:]]))
    assert again.results[0].metrics.balanced_accuracy == metrics.balanced_accuracy


@pytest.mark.slow
def test_compare_gradients_cnn_writes_per_layer_tables(tmp_path):
    from training.runs.gradients import CnnGradientOptions, compare_cnn_gradients

    result = compare_cnn_gradients(tmp_path, CnnGradientOptions(image_size=20, batch_size=2, quick=True))
    assert result.worst_float64 <= 1e-10
    errors = read_csv(tmp_path / "cnn_gradient_errors.csv")
    assert [r["parameter"] for r in errors][:2] == ["conv1/kernel", "conv1/bias"] and len(errors) == 16
    timings = read_csv(tmp_path / "cnn_backward_timings.csv")
    assert [r["layer"] for r in timings][:5] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert all(float(r["manual ms"]) > 0 and float(r["autodiff ms"]) > 0 for r in timings)


def test_agreement_kappas_and_confusion(tmp_path):
    from training.evaluation.agreement import agreement
    from training.runs.agreement import compare_ratings

    perfect = agreement(["Probable", "Possible", "Improbable"], ["Probable", "Possible", "Improbable"])
    assert perfect["cohen_kappa"] == 1.0 and perfect["quadratic_weighted_kappa"] == 1.0
    rated = ["Probable", "Possible", "Improbable"]
    near = agreement(rated, ["Possible", "Probable", "Improbable"])  # two one-step swaps
    far = agreement(rated, ["Improbable", "Possible", "Probable"])  # two two-step swaps, same marginals
    assert near["cohen_kappa"] == far["cohen_kappa"] == 0.0  # unweighted: both at chance
    assert near["quadratic_weighted_kappa"] > far["quadratic_weighted_kappa"]  # weights see the distance
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['Dead'\]"):
        agreement(["Dead"], ["Probable"])

    (tmp_path / "p.csv").write_text("path,predicted,p_a\nx/a.jpg,Probable,1\nx/b.jpg,Improbable,1\n"
                                    "x/c.jpg,Possible,1\n")
    (tmp_path / "r.csv").write_text("path,rater1,rater2\na.jpg,Probable,Possible\nb.jpg,Improbable,Improbable\n"
                                    "c.jpg,Possible,Possible\n")
    rows = compare_ratings(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "out").rows
    assert [r.pair for r in rows] == ["model vs rater1", "model vs rater2", "rater1 vs rater2"]
    assert rows[0].cohen_kappa == 1.0 and rows[1].agreement == pytest.approx(2 / 3)
    assert (tmp_path / "out" / "confusion_model_vs_rater2.md").exists()


@pytest.mark.slow
def test_explain_cli_writes_heat_map_pngs(tmp_path):

    from training.loop.config import get_config
    from training.loop.fit import fit
    from training.runs.explain import ExplainOptions, explain_photos

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 16, 16, 1)).astype(np.float32)
    y = (np.arange(12) % 2).astype(np.int32)
    # the setting of test_matrix's model1 run (16 px grayscale, batch 4): its compiled programs are shared
    fit(get_config("lab-2020", image_size=16, epochs=1, batch_size=4), x[:8], y[:8], x[8:], y[8:],
        ["a", "b"], tmp_path / "run", progress=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray((rng.uniform(0, 255, (30, 40, 3))).astype(np.uint8)).save(photos / f"p{i}.png")
    rows = explain_photos(tmp_path / "run", [str(photos)], tmp_path / "explain", ExplainOptions(progress=False)).rows
    assert len(rows) == 2 and all(Path(r.png).stat().st_size > 0 for r in rows)
    assert all(r.predicted in ("a", "b") and 0.5 <= r.probability <= 1.0 for r in rows)


@pytest.fixture
def small_photo_folder(tmp_path):
    from tests.helpers import make_photos

    return make_photos(tmp_path / "photos", ("Probable", "Possible", "Improbable"), n=6, size=30, seed=0,
                       shades=(40, 120, 200))


@pytest.mark.slow
def test_results_table_grid_is_honest_and_resumable(small_photo_folder, tmp_path):
    """Two scenarios × the lab's row and the default (pretrained) row; the improved configuration's 5-fold
    Model 1 path is the same code (run_folds), exercised by the architectures test."""
    from training.runs.grid import GridOptions, results_grid

    out = tmp_path / "table"
    options = GridOptions(scenarios=("Pr_Im", "Pr_Po_Im"), image_sizes=(16,), configs=("lab-2020", "pretrained"),
                          max_epochs=1, cache_dir=str(tmp_path / "cache"), progress=False)
    rows = [r.as_json() for r in results_grid(small_photo_folder, out, options).rows]
    assert [(r["classes"], r["config"], r["size"]) for r in rows] == [
        ("Probable vs Improbable", "lab-2020", 16), ("Probable vs Improbable", "pretrained", 240),
        ("Probable vs Possible vs Improbable", "lab-2020", 16),
        ("Probable vs Possible vs Improbable", "pretrained", 240)]
    for five_fold in (rows[1], rows[3]):
        assert five_fold["folds"] == 5 and "±" in five_fold["Acc."] and five_fold["beats majority?"] in ("yes", "NO")
        lo, hi = (float(v) for v in five_fold["Bal. acc. 95% CI"].split("–"))
        assert 0 <= lo <= hi <= 100
    assert rows[1]["beats majority?"] == "yes"  # three shades of grey: ImageNet features separate them
    assert rows[0]["positive class"] == "Probable" and rows[2]["ROC-AUC"] == "–"  # ROC-AUC for two classes only
    assert rows[0]["calibration"] == "none" and rows[1]["calibration"].startswith("auto (")  # on inner predictions
    ece, bins = rows[1]["ECE [95% CI] (bins)"].rsplit(" (", 1)
    assert bins == "1)" and 0 <= float(ece.split()[0]) <= 1  # the few scored photos: one equal-mass bin
    for name in ("results.md", "results.csv", "confusion_Pr_Im-16-lab-2020.png",
                 "reliability_Pr_Im-240-pretrained.png"):
        assert (out / name).stat().st_size > 0
    stamp = (out / "rows" / "Pr_Im-240-pretrained.json").stat().st_mtime_ns
    again = results_grid(small_photo_folder, out, options).rows
    assert (out / "rows" / "Pr_Im-240-pretrained.json").stat().st_mtime_ns == stamp  # finished rows are skipped
    assert [r.accuracy for r in again] == [r["Acc."] for r in rows]


def test_results_table_reports_rows_too_small_to_split(tmp_path):
    from training.runs.grid import GridOptions, results_grid

    rows = results_grid(shared_path("tree-risk-examples"), tmp_path / "t", GridOptions(
        scenarios=("Pr_Im",), image_sizes=(16,), configs=("lab-2020",), cache_dir=str(tmp_path / "c"),
        progress=False)).rows
    assert rows[0].beats_majority.startswith("not run: too few images to stratify")
    assert rows[0].n_images == 2  # the Possible photos are excluded in Pr_Im


@pytest.mark.slow
def test_architectures_compares_models_on_the_same_folds(small_photo_folder, tmp_path):
    from training.runs.architectures import ArchitectureOptions, compare_architectures
    from training.runs.experiment import DataSpec

    rows = compare_architectures(DataSpec(str(small_photo_folder), scenario="Pr_Im"), tmp_path / "a",
                                 ArchitectureOptions(models=("model1",), image_size=16, folds=2, epochs=1,
                                                     cache_dir=str(tmp_path / "c"), progress=False)).rows
    assert [r.model for r in rows] == ["model1"] and rows[0].folds == 2
    assert (tmp_path / "a" / "architectures.md").exists()


@pytest.mark.slow
def test_mnist_cnn_smoke(tmp_path):
    from training.runs.mnist import MnistOptions, train_mnist_cnn

    report = train_mnist_cnn(shared_path("mnist.npz"), tmp_path, MnistOptions(epochs=1, limit=600, grad="autodiff",
                                                                               progress=False))
    assert report.train_images == report.test_images == 600 and 0.1 < report.test_accuracy <= 1.0
    assert (tmp_path / "mnist_test.md").exists()


@pytest.mark.slow
def test_backbones_rows_agree_with_train_on_the_same_folds(small_photo_folder, tmp_path):
    """Each backbone's row is the nested CV that ``experiments.train`` runs for it (same folds, same head):
    two independent paths through the library give the same probabilities on every scored photo."""
    from experiments import train
    from training.runs.backbones import BackboneOptions, compare_backbones, fold_probabilities
    from training.runs.experiment import DataSpec

    cache = str(tmp_path / "cache")
    common = ["--data", str(small_photo_folder), "--scenario", "Pr_Im", "--image-size", "32", "--folds", "2",
              "--cache-dir", cache, "--no-progress"]
    spec = DataSpec(str(small_photo_folder), scenario="Pr_Im")
    options = BackboneOptions(backbones=("efficientnet_lite0", "efficientnet_lite1"), image_size=32, folds=2,
                              cache_dir=cache, progress=False)
    rows = [r.cells() for r in compare_backbones(spec, tmp_path / "b", options).rows]
    assert [r["features"] for r in rows] == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0 + efficientnet_lite1 (concat)",
        "efficientnet_lite0 + efficientnet_lite1 (average)"]
    for r in rows:
        low, high = (float(v) for v in r["95% interval"].split("–"))
        assert 0 <= low <= r["balanced accuracy"] <= high <= 1 and len(r["per fold"].split()) == 2
    assert (tmp_path / "b" / "backbones.md").exists() and (tmp_path / "b" / "backbones.png").stat().st_size > 0
    lite0 = dataclasses.replace(options, backbones=("efficientnet_lite0",))
    probs = fold_probabilities(spec, lite0).probs  # its features from the cache
    results = train.run(train.parser().parse_args([*common, "--model", "efficientnet_lite0",
                                                   "--out", str(tmp_path / "t")])).results
    assert len(results) == len(probs["efficientnet_lite0"]) == 2
    for result, (rows_va, p) in zip(results, probs["efficientnet_lite0"]):
        np.testing.assert_array_equal(result.outer_index, rows_va)
        np.testing.assert_allclose(p, result.raw_probs, rtol=1e-6, atol=1e-7)  # before calibration
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert rows[0]["balanced accuracy"] == round(summary["balanced_accuracy"], 4)


def test_backbones_refuses_a_backbone_named_twice(capsys):
    from experiments import backbones

    with pytest.raises(SystemExit) as exc:
        backbones.main(["--data", "x", "--backbones", "efficientnet_lite0", "efficientnet_lite0"])
    assert exc.value.code == 2
    assert "named twice: efficientnet_lite0 efficientnet_lite0" in capsys.readouterr().err
