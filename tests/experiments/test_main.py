"""``experiments.main`` is three library calls, each step's closing line printed as its own command prints it.

The calls are replaced by fakes that record their arguments and give back a report (no work is done: the real
calls are tested in tests/experiments/test_experiments.py and by the commands' tests)."""

from pathlib import Path


def test_main_calls_the_library_and_prints_each_step_s_closing_lines(tmp_path, monkeypatch, capsys):
    import training.loop.mlp as mlp
    import training.runs.experiment as experiment
    import training.runs.gradients as gradients
    from experiments import main

    calls = {}

    def compare(out, options):
        calls["gradients"] = (Path(out), options)
        out = Path(out)
        return gradients.GradientReport(4.4e-16, 1.75e-7, [{}] * 80, [{}] * 20, out / "gradient_errors.md",
                                        out / "gradient_timings.md", out / "gradient_comparison.png")

    def train_mlp(data, out, options):
        calls["mlp"] = (data, Path(out), options)
        return mlp.MlpReport("digits", [64, 30, 10], {"epochs": 30}, 0, [], 0.95, 0.96, 21, 1.25, None, str(out))

    def train_and_evaluate(config, data_spec, workdir, options):
        calls["cnn"] = (config, data_spec, workdir, options)
        return experiment.RunSummary(str(workdir), config, ["0", "1"], [object()], {}, (0.0, 1.0))

    monkeypatch.setattr(gradients, "compare_gradients", compare)
    monkeypatch.setattr(mlp, "train_mlp", train_mlp)
    monkeypatch.setattr(experiment, "train_and_evaluate", train_and_evaluate)
    out = tmp_path / "main"
    main.main(["--out", str(out), "--no-progress"])

    assert calls["gradients"][0] == out / "compare_gradients" and calls["gradients"][1].quick
    data, mlp_out, mlp_options = calls["mlp"]
    assert data is None and mlp_out == out / "train_mlp" and mlp_options == mlp.MlpOptions(progress=False)
    config, data_spec, workdir, options = calls["cnn"]
    digits = experiment.DataSpec(None)
    assert config == experiment.training_config("lab-2020", digits) and data_spec == digits
    assert config.model == "model1" and config.epochs == 4 and config.image_size == 32
    assert workdir == str(out / "train_cnn")
    assert options == experiment.RunOptions(overwrite=True, progress=False)
    g, cnn = out / "compare_gradients", out / "train_cnn"
    assert capsys.readouterr().out.splitlines() == [
        "== 1. manual backprop vs jax.grad",
        "max relative error vs jax.grad: float64 4.40e-16, float32 1.75e-07",
        f"80 gradient comparisons and 20 timings: tables {g}/gradient_errors.md, {g}/gradient_timings.md "
        f"(and .csv), plot {g}/gradient_comparison.png",
        "== 2. MLP on scikit-learn digits with the manual gradients",
        "final test accuracy 95.00% (best 96.00% at epoch 21), 1.2 s",
        f"trained 64-30-10 for 30 epochs: tables {out}/train_mlp/history.md, {out}/train_mlp/summary.md (and .csv), "
        f"plot {out}/train_mlp/learning_curve.png",
        "== 3. Model 1 CNN on the digits (32 px), Optax Adam, 4 epochs",
        f"run written to {cnn}: summary {cnn}/summary.md, report (metrics.md, plots) and checkpoints/ in {cnn}",
        f"done: tables (.md, .csv) and plots (.png) under {out}/",
    ]
