"""Transfer learning: fine-tuning modes, the head's honest selection, cached features, views and block maps."""

from pathlib import Path

import jax
import numpy as np
import pytest

from models.efficientnet_lite import EfficientNetLite, block_specs
from models.transfer import TransferClassifier
from tests.helpers import jitted_features, make_photos, read_predictions, relative_errors
from training.loop.config import get_config
from training.loop.optimizer import trainable_mask
from training.transfer.features import extract_features
from training.transfer.head import select_head


@pytest.mark.parametrize("finetune", ["head"])
def test_finetune_modes_train_what_they_say_and_batchnorm_stays_frozen(finetune, lite0):
    """One float32 Adam step of the project's train step: what the mode names moves, nothing else does, and the
    BatchNorm statistics never do. (``top`` is checked so after its 4 steps on the photos in
    :func:`test_fine_tuning_the_top_on_cached_maps_is_fine_tuning_it_on_the_photos`, and ``all`` in
    tests/manual_backprop/test_manual_efficientnet.py, on the 4 float64 steps it takes there with the same
    optimizer mask: more compilations of Lite0's backward here would check nothing more.)"""
    import optax

    from training.loop.config import get_config
    from training.loop.registry import build_model
    from training.loop.state import create_state
    from training.loop.steps import make_train_step

    params, _ = lite0
    backbone = {k: v for k, v in params.items() if k != "fc"}
    config = get_config(model="efficientnet_lite0", finetune=finetune, image_size=32, learning_rate=1e-3,
                        batch_size=2, recipe=False)
    model = build_model(config, 2)
    state = create_state(model, config, (32, 32, 3), key=jax.random.PRNGKey(0), backbone=backbone)
    rng = np.random.default_rng(0)
    batch = {"x": rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32), "y": np.array([0, 1], np.int32),
             "w": np.ones(2, np.float32), "mask": np.ones(2, np.float32)}
    new, m = make_train_step(model)(state, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(m["loss"]))
    mask = trainable_mask(state.params, finetune, config.top_blocks)
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new.params,
                                     state.params)
    flat_mask = jax.tree_util.tree_leaves_with_path(mask)
    flat_changed = dict(jax.tree_util.tree_leaves_with_path(changed))
    for path, trains in flat_mask:
        names = [p.key for p in path]
        if names[-1] in ("mean", "var"):
            assert not trains and not flat_changed[path], names
        elif not trains:
            assert not flat_changed[path], names  # frozen weights do not move
    n_train = sum(bool(t) for _, t in flat_mask)
    assert n_train > 0 and isinstance(state.tx, optax.GradientTransformation)
    expected = {"head": 2, "top": None, "all": None}[finetune]
    if expected is not None:
        assert n_train == expected  # head kernel and bias only
    assert flat_changed[next(p for p, _ in flat_mask if [k.key for k in p] == ["head", "kernel"])]


def _separable(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(np.int32)  # imbalanced: a third positive
    F = rng.normal(size=(n, 2, d)).astype(np.float32)
    F[y == 1, :, 0] += 2.5
    return F, y


@pytest.mark.parametrize(("grid", "widened"), [((3.0, 10.0), "below"), ((1e-3, 1e-2, 1e-1, 1.0), "above")],
                         ids=["too-strong", "too-weak"])
def test_a_lambda_grid_whose_winner_is_on_an_edge_is_widened_until_it_is_not(grid, widened):
    """Noisy labels on two informative features of 40: the best λ is moderate. A grid that stops short of it
    is extended with its own spacing until the winner is inside. One Adam step from zero weights is the same
    for every λ (the penalty's gradient 2λW is zero there): a tie, which extends nothing."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 40)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] + rng.normal(size=64) > 0).astype(np.int64)
    F, w = np.stack([X, X], axis=1), np.ones(2, np.float32)
    kw = dict(steps=100, lr=1e-2, inner_folds=4, seed=0)
    choice = select_head(F, y, 2, w, l2_grid=grid, **kw)
    assert set(grid) < set(choice.l2_grid) and choice.curves.shape == (len(choice.l2_grid), 100)
    assert (min(choice.l2_grid) < min(grid)) == (widened == "below")
    assert min(choice.l2_grid) < choice.l2 < max(choice.l2_grid)  # inside: the optimum is bracketed
    ratios = np.diff(np.log(choice.l2_grid))
    assert np.all(ratios > 0)  # sorted, log-spaced where it was extended
    tie = select_head(F, y, 2, w, l2_grid=grid, **{**kw, "steps": 1})
    assert tie.l2_grid == grid and np.all(tie.curves == tie.curves[0])


def test_head_selection_never_looks_at_the_scored_fold():
    """The choice (λ, steps) made on a training part cannot depend on the scored fold's labels or features."""
    F, y = _separable()
    w = np.ones(2, np.float32)
    kw = dict(l2_grid=(1e-3, 1e-1), steps=60, lr=1e-2, inner_folds=3, seed=0)
    tr = np.arange(45)
    a = select_head(F[tr], y[tr], 2, w, **kw)
    F2 = F.copy()
    F2[45:] = 100.0  # scramble what would be the scored fold
    b = select_head(F2[tr], y[tr], 2, w, **kw)
    assert (a.l2, a.steps) == (b.l2, b.steps) and np.array_equal(a.oof_probs, b.oof_probs)
    assert a.oof_probs.shape == (45, 2) and np.allclose(a.oof_probs.sum(axis=1), 1, atol=1e-5)
    assert a.curves.shape == (len(a.l2_grid), 60) and np.isfinite(a.curves).all()
    # it learned: the inner out-of-fold predictions beat chance
    assert np.mean(a.oof_probs.argmax(axis=1) == y[tr]) > 0.8



@pytest.mark.slow
@pytest.mark.parametrize("engine", ["jax", "onnxruntime"])
def test_features_are_cached_by_image_digest(tmp_path, lite0, engine):
    """Each engine's features (JAX, or ONNX Runtime on the exported backbone; both with BatchNorm folded) equal the
    unfolded Flax forward's, are cached by image digest, and are cached apart from the other engine's."""
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[deploy]')")
    params, digest = lite0
    backbone = {k: v for k, v in params.items() if k != "fc"}
    x = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    digests = ["a" * 64, "b" * 64, "c" * 64]
    f1, n1 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", cache_dir=tmp_path,
                              batch_size=2, engine=engine)
    f2, n2 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", cache_dir=tmp_path,
                              batch_size=2, engine=engine)
    assert (n1, n2) == (3, 0) and f1.shape == (3, 2, 1280) and np.array_equal(f1, f2)
    assert [p.name.rsplit("-", 1)[1] for p in (tmp_path / "features").iterdir()] == [engine]  # not the other's
    # an entry of the right dtype but another width, or all NaN, is computed again (and rewritten), not used
    (wrong,) = (tmp_path / "features").rglob("a" * 64 + ".npy")
    (nan,) = (tmp_path / "features").rglob("b" * 64 + ".npy")
    np.save(wrong, np.ones((2, 1279), np.float32))
    np.save(nan, np.full((2, 1280), np.nan, np.float32))
    f3, n3 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", cache_dir=tmp_path,
                              batch_size=2, engine=engine)
    assert n3 == 2 and np.array_equal(f3, f1) and np.load(wrong).shape == (2, 1280)
    direct = jitted_features(EfficientNetLite("efficientnet_lite0"))
    for view, images in enumerate((x, x[:, :, ::-1])):  # view 1 is the mirror image
        assert max(relative_errors(f1[:, view], direct(params, images))) <= 1e-5, (engine, view)


@pytest.mark.slow
def test_augmented_views_are_the_backbones_features_of_each_view_and_are_cached_per_view(tmp_path, lite0):
    """View i of a photo = the Flax forward on ``augment_image`` with the key (seed, photo hash, i), and on its
    mirror image; a second extraction computes nothing, and a lost view file is computed again alone."""
    from training.data.augment import Augment, augment_image
    from training.transfer.features import Views

    params, digest = lite0
    backbone = {k: v for k, v in params.items() if k != "fc"}
    x = np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    digests = ["1f" * 32, "2e" * 32, "3d" * 32]
    views = Views(2, Augment(crop_pad=3, flip=False, max_degrees=8.0), seed=5)
    kw = dict(cache_dir=tmp_path, batch_size=2, engine="jax", views=views)
    f1, n1 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **kw)
    assert n1 == 3 and f1.shape == (3, 4, 1280)
    direct = jitted_features(EfficientNetLite("efficientnet_lite0"))
    one = jax.jit(augment_image, static_argnames="aug")
    for i in range(2):
        keys = [jax.random.fold_in(jax.random.fold_in(jax.random.key(5), int(d[:8], 16)), i) for d in digests]
        aug = np.stack([one(im, key=k, aug=views.augment) for im, k in zip(x, keys)])
        for m, images in enumerate((aug, aug[:, :, ::-1])):
            assert max(relative_errors(f1[:, 2 * i + m], direct(params, images))) <= 1e-5, (i, m)
    assert not np.allclose(f1[:, 0], f1[:, 2])  # two views, two augmentations
    f2, n2 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **kw)
    assert n2 == 0 and np.array_equal(f1, f2)
    next(tmp_path.rglob(f"{digests[1]}-1.npy")).unlink()
    f3, n3 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **kw)
    assert n3 == 1 and max(relative_errors(f3, f1)) <= 1e-5  # (another row of the batch: not bit for bit)
    plain, n = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **{**kw, "views": None})
    assert n == 3 and plain.shape == (3, 2, 1280)  # the photos' own features are cached apart


def test_block_maps_are_cached_and_the_top_from_them_is_the_whole_classifier(tmp_path, lite0):
    """``extract_features(block=k)``: the activation maps at the input of block k of each photo and its mirror
    image, cached (a second call computes nothing; a damaged entry, or one of another shape, is computed again).
    The classifier run from those maps (``start_block=k``) gives the whole classifier's logits on the photos,
    and the eval step's mirrored pairs give its flip-averaged probabilities. Too few or too many blocks, or a
    map of the wrong width, are refused by name."""
    from training.loop.steps import make_eval_step

    params, digest = lite0
    backbone = {k: v for k, v in params.items() if k != "fc"}
    n_blocks = len(block_specs("efficientnet_lite0"))
    x = np.random.default_rng(2).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    digests = ["4c" * 32, "5b" * 32, "6a" * 32]
    kw = dict(cache_dir=tmp_path, batch_size=2, block=n_blocks - 2)
    maps, n1 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **kw)
    assert n1 == 3 and maps.shape == (3, 2, 1, 1, 192)  # 32 px: 1×1 at stride 32
    again, n2 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **kw)
    assert n2 == 0 and np.array_equal(again, maps)
    entry = next(tmp_path.rglob(f"{digests[2]}.npy"))
    np.save(entry, np.zeros((2, 1280), np.float32))  # a features entry where a map belongs: computed again
    fixed, n3 = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k", **kw)
    assert n3 == 1 and max(relative_errors(fixed, maps)) <= 1e-5
    whole = TransferClassifier("efficientnet_lite0", 2)
    head = {"kernel": np.random.default_rng(3).normal(size=(1280, 2)).astype(np.float32) * 0.1,
            "bias": np.zeros(2, np.float32)}
    p = {"backbone": backbone, "head": head}
    top = whole.clone(start_block=n_blocks - 2)
    ref = jax.jit(jax.vmap(lambda im: whole.apply({"params": p}, im)))(np.concatenate([x, x[:, :, ::-1]]))
    got = jax.jit(jax.vmap(lambda m: top.apply({"params": p}, m)))(np.concatenate([maps[:, 0], maps[:, 1]]))
    assert max(relative_errors(got, ref)) <= 1e-5  # the photos', then their mirror images'
    probs = make_eval_step(top, tta_flip=True, mirrored=True)(p, maps)
    flip_mean = 0.5 * (jax.nn.softmax(ref[:3]) + jax.nn.softmax(ref[3:]))
    np.testing.assert_allclose(probs, flip_mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="block 14 of efficientnet_lite0 takes an activation map \\(h, w, 192\\)"):
        top.apply({"params": p}, maps[0, 0, :, :, :100])
    with pytest.raises(ValueError, match=f"blocks 0–{n_blocks - 1}: cannot run from block {n_blocks + 1}"):
        whole.clone(start_block=n_blocks + 1).apply({"params": p}, maps[0, 0])


def test_fine_tuning_the_top_on_cached_maps_is_fine_tuning_it_on_the_photos(tmp_path, lite0):
    """``fit(maps_from=k)``, one map per photo and no augmentation: two epochs on the frozen blocks' cached maps
    are two epochs of the whole classifier on the photos, with the same shuffles and keys. The first step's loss
    is the same to float32 rounding (the frozen blocks ran in another program); then Adam's first update,
    lr·g/(|g| + ε), moves a weight by at most 2·lr more or less per step where gradients differ in rounding, so
    no weight differs by more than 2·lr·T after T steps (the bound checked), and the frozen ones not at all.
    On the photos, ``top`` trains what it names: every weight outside it, and every BatchNorm statistic, is
    still the packaged one; the top block moved."""
    from training.loop.fit import fit
    from training.transfer.features import make_block_input_fn

    params, _ = lite0
    backbone = {k: v for k, v in params.items() if k != "fc"}
    block = len(block_specs("efficientnet_lite0")) - 2
    config = get_config(model="efficientnet_lite0", finetune="top", image_size=32, learning_rate=1e-3, batch_size=2,
                        epochs=2, selection="last", tta_flip=True, calibration="none", refer_coverage=None,
                        recipe=False)
    rng = np.random.default_rng(4)
    x, xv = (rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32) for n in (4, 2))
    y, yv = np.arange(4, dtype=np.int32) % 2, np.arange(2, dtype=np.int32) % 2
    maps_of = make_block_input_fn("efficientnet_lite0", block)  # two photos a call: the program the test above ran
    both = np.concatenate([np.asarray(maps_of(backbone, a)) for a in (x[:2], x[2:], xv)])
    maps, vmaps = both[:4], both[4:]  # (n, 2, 1, 1, 192): each photo's map, its mirror image's
    kw = dict(progress=False, backbone=backbone)
    photos = fit(config, x, y, xv, yv, ["a", "b"], tmp_path / "photos", **kw)
    cached = fit(config, maps[:, :1], y, vmaps, yv, ["a", "b"], tmp_path / "maps", maps_from=block, **kw)
    first = [h["train_loss"] for h in (photos.history[0], cached.history[0])]
    np.testing.assert_allclose(first[1], first[0], rtol=1e-5)
    steps = 2 * 2  # 2 epochs of 2 batches
    diff = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                  cached.best_params, photos.best_params)
    assert max(jax.tree_util.tree_leaves(diff)) <= 2 * 1e-3 * steps
    frozen = [diff["backbone"][k] for k in ("conv_stem", "bn_stem", *(f"block{i}" for i in range(block)))]
    assert max(jax.tree_util.tree_leaves(frozen)) == 0.0
    moved = {name: jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), run.best_params["backbone"],
                                          backbone) for name, run in (("photos", photos), ("maps", cached))}
    assert all(any(jax.tree_util.tree_leaves(m[f"block{block}"])) for m in moved.values())  # the top trained
    trains = trainable_mask({"backbone": backbone, "head": photos.best_params["head"]}, "top", config.top_blocks)
    moved = dict(jax.tree_util.tree_leaves_with_path(moved["photos"]))  # the whole network ran forward there
    for path, t in jax.tree_util.tree_leaves_with_path(trains["backbone"]):
        if path[-1].key in ("mean", "var"):
            assert not t and not moved[path], path  # BatchNorm statistics stay frozen
        elif not t:
            assert not moved[path], path  # frozen weights do not move


def test_augmented_views_join_the_heads_training_as_more_views():
    """Views that repeat the photo and its mirror image leave the view-averaged loss, the standardization
    and so the whole fit unchanged; views that differ change it, and validation still reads ``F`` alone."""
    from training.transfer.head import fit_head

    F, y = _separable()
    w = np.ones(2, np.float32)
    kw = dict(l2_grid=(1e-3, 1e-1), steps=40, lr=1e-2, inner_folds=3, seed=0)
    a = select_head(F, y, 2, w, **kw)
    b = select_head(F, y, 2, w, views=np.concatenate([F, F], axis=1), **kw)
    assert (a.l2, a.steps) == (b.l2, b.steps)
    assert np.allclose(a.curves, b.curves, rtol=1e-4, atol=1e-6) and np.allclose(a.oof_probs, b.oof_probs, atol=1e-5)
    (ha, na), (hb, nb) = (fit_head(F, y, 2, w, l2=a.l2, steps=a.steps, lr=1e-2, views=v) for v in (None, F))
    for key in ("kernel", "bias"):
        assert max(relative_errors(hb[key], ha[key])) <= 1e-4
    assert max(relative_errors(np.array(nb["std"]), np.array(na["std"]))) <= 1e-5
    noisy = F + np.random.default_rng(2).normal(0, 1, F.shape).astype(np.float32)
    c = select_head(F, y, 2, w, views=noisy, **kw)
    assert not np.allclose(c.curves, a.curves, rtol=1e-3) and c.oof_probs.shape == a.oof_probs.shape



def test_target_recall_threshold_is_saved_and_applied_by_predict(tmp_path, monkeypatch):
    """``target_recall`` (--target-recall) chooses the threshold on inner data, reports the scored fold's recall, and
    predict uses it. The calibration (``auto`` here) is fitted on the inner out-of-fold predictions of the training
    part: the labels it sees are exactly the training part's, never a scored photo's. (A malformed --target-recall
    is refused by the command: tests/experiments/test_cli.py, ``recall-no-equals``.)"""
    import json

    from training.loop import scoring
    from training.runs.experiment import DataSpec, RunOptions, train_and_evaluate, training_config
    from training.runs.predict import PredictOptions, predict_photos

    seen = []

    def recording(method, probs, y, **kw):
        seen.append(np.asarray(y).copy())
        return choose(method, probs, y, **kw)

    choose = scoring.choose_calibration
    monkeypatch.setattr(scoring, "choose_calibration", recording)

    root = make_photos(tmp_path / "photos", ("Probable", "Improbable"), n=10, size=24, seed=0,
                       shades=((200, 40, 40), (40, 160, 40)), spread=40, name="{i}.png")
    out = tmp_path / "run"
    data = DataSpec(str(root))
    config = training_config("pretrained", data, model="efficientnet_lite0", image_size=32,
                             target_recall=("Probable", 0.9), calibration="auto")
    result = train_and_evaluate(config, data, out, RunOptions(cache_dir=str(tmp_path / "cache"), progress=False))
    split = json.loads((out / "split.json").read_text())
    names = result.class_names
    (y_fit,) = seen
    assert y_fit.tolist() == [names.index(Path(p).parent.name) for p in split["train"]]
    assert len(y_fit) == 16 and len(split["validation"]) == 4
    cal = json.loads((out / "checkpoints" / "config.json").read_text())["calibration"]
    assert cal["requested"] == "auto" and cal["method"] in cal["cv_log_loss"] and cal["fitted_on"] == 16
    op = result.results[0].metrics.operating_point
    assert op["class"] == "Probable" and op["target_recall"] == 0.9 and 0 <= op["threshold"] <= 1
    saved = json.loads((out / "checkpoints" / "config.json").read_text())["operating_point"]
    assert saved["threshold"] == op["threshold"]
    predict_photos(out, [str(root)], tmp_path / "p.csv", PredictOptions(progress=False))
    rows = read_predictions(tmp_path / "p.csv")
    for r in rows:
        assert (r["predicted"] == "Probable") == (r["p_Probable"] >= saved["threshold"])



def test_features_read_from_files_in_chunks_equal_those_of_decoded_images(tmp_path, lite0):
    """Training with a frozen backbone reads its photos from the files, a chunk at a time (bounded memory):
    the features equal those of the same photos decoded up front; an unreadable photo is named."""
    from PIL import Image

    from training.data.decoding import BadImageError, Preprocess, load_image

    params, digest = lite0
    backbone = {k: v for k, v in params.items() if k != "fc"}
    rng = np.random.default_rng(0)
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(files[-1])
    pre = Preprocess(32, "center", True)
    x = np.stack([load_image(f, pre) for f in files])
    digests = [f"{i}" * 64 for i in range(5)]
    from_arrays, _ = extract_features(x, digests, "efficientnet_lite0", backbone, digest, "k",
                                      cache_dir=tmp_path / "a", batch_size=2)
    from_files, n = extract_features([str(f) for f in files], digests, "efficientnet_lite0", backbone, digest, "k",
                                     pre=pre, cache_dir=tmp_path / "b", batch_size=2)
    assert n == 5 and np.array_equal(from_arrays, from_files)
    files[3].write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="3.png"):
        extract_features([str(f) for f in files], digests, "efficientnet_lite0", backbone, digest, "k",
                         pre=pre, cache_dir=tmp_path / "c", batch_size=2)

