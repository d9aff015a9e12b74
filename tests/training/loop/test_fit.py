"""Photos → arrays → Model 1 → trained checkpoint: data integrity, splits, steps, devices, checkpoints."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from models import Model1, count_params, model1_param_count
from tests.conftest import shared_path
from training.data.images import BadImageError, ImageCache, Preprocess, discover, load_image, load_images
from training.data.labels import SCENARIOS, Grouping, load_grouping, stratified_folds, stratified_split
from training.evaluation.metrics import classification_metrics, majority_baseline
from training.loop.config import get_config
from training.loop.steps import create_model, create_state, fit, make_batch, make_train_step
from training.runs.saved import load_trained

REPO = Path(__file__).resolve().parents[3]


# --- helpers: small real image files of every kind ---
def save(path: Path, im: Image.Image, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def gradient_image(w=60, h=40, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        save(root / "Probable" / f"p{i}.jpg", gradient_image(seed=i), "JPEG")
        save(root / "Improbable" / f"i{i}.png", gradient_image(seed=100 + i), "PNG")
        save(root / "Possible" / f"o{i}.jpg", gradient_image(seed=200 + i), "JPEG")
    return root


# --- reading photos ---
FORMATS = {
    "jpeg": lambda p: save(p, gradient_image(), "JPEG"),
    "png_rgba": lambda p: save(p, gradient_image().convert("RGBA"), "PNG"),
    "png_16bit": lambda p: save(p, Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)),
                                "PNG"),
    "webp_named_jpg": lambda p: save(p, gradient_image(), "WEBP"),
    "cmyk_jpeg": lambda p: save(p, gradient_image().convert("CMYK"), "JPEG"),
    "palette_gif": lambda p: save(p, gradient_image().convert("P"), "GIF"),
    "grayscale_tiff": lambda p: save(p, gradient_image().convert("L"), "TIFF"),
    "mpo": lambda p: save(p, gradient_image(), "MPO", save_all=True, append_images=[gradient_image(seed=1)]),
}


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
@pytest.mark.parametrize("kind", list(FORMATS))
def test_any_pillow_format_whatever_the_extension(tmp_path, kind, rgb):
    path = FORMATS[kind](tmp_path / "image.jpg" if kind == "webp_named_jpg" else tmp_path / f"image.{kind}")
    arr = load_image(path, Preprocess(image_size=16, rgb=rgb))
    assert arr.shape == (16, 16, 3 if rgb else 1) and arr.dtype == np.float32
    assert np.all(np.isfinite(arr)) and arr.min() >= 0.0 and arr.max() <= 1.0 and arr.std() > 0


def test_exif_orientation_and_center_crop(tmp_path):
    """A 60×40 image stored with EXIF orientation 6 is a 40×60 portrait; the crop is its centre square."""
    arr = np.zeros((40, 60), np.uint8)
    arr[:, :30] = 255  # left half white in storage → top half white once rotated 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "rot.jpg", Image.fromarray(arr, "L"), "JPEG", exif=exif, quality=95)
    out = load_image(path, Preprocess(image_size=40, crop="squash"))[:, :, 0]
    assert out[:15].mean() > 0.8 and out[-15:].mean() < 0.2  # rotated: white on top
    center = load_image(path, Preprocess(image_size=40, crop="center"))[:, :, 0]
    assert center[:5].mean() > 0.8 and center[-5:].mean() < 0.2  # the centred 40×40 square of a 40×60 portrait


def test_real_field_photos_exif_crop_and_cache(tmp_path):
    """The 4 real 12 MP iPhone photos: 3024×4032 after EXIF, center crop, shapes/range; second run hits cache."""
    folder = shared_path("tree-risk-examples")
    items = discover(folder)
    assert len(items) == 4
    with Image.open(items[0][0]) as im:
        from PIL import ImageOps

        assert im.size == (4032, 3024) and ImageOps.exif_transpose(im).size == (3024, 4032)
    cache = ImageCache(tmp_path / "cache")
    pre = Preprocess(image_size=108)
    first = load_images(items, pre, cache=cache)
    assert first.x.shape == (4, 108, 108, 1) and first.x.dtype == np.float32
    assert 0.0 <= first.x.min() and first.x.max() <= 1.0 and first.report.cache_hits == 0
    second = load_images(items, pre, cache=cache)
    assert second.report.cache_hits == 4
    np.testing.assert_array_equal(first.x, second.x)
    # draft decoding agrees with a plain full decode + bicubic (same crop) to within JPEG-scaling noise
    with Image.open(items[0][0]) as im:
        from PIL import ImageOps

        full = ImageOps.exif_transpose(im).convert("L")
        w, h = full.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        ref = np.asarray(full.resize((108, 108), Image.Resampling.BICUBIC, box=box), np.float32) / 255
    assert np.abs(first.x[0, :, :, 0] - ref).mean() < 0.02


BAD_FILES = {
    "zero_byte": (lambda p: p.write_bytes(b""), "empty file"),
    "not_an_image": (lambda p: p.write_bytes(b"hello, this is text"), "not an image"),
    "truncated_jpeg": (lambda p: p.write_bytes(_jpeg_bytes()[:2000]), "corrupt or truncated"),
    "corrupt_png": (lambda p: p.write_bytes(_png_bytes()[:60] + b"\x00" * 200), "corrupt or truncated"),
}


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    gradient_image(200, 200).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    gradient_image(200, 200).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_is_named_or_skipped_and_counted(photo_folder, kind):
    make, message = BAD_FILES[kind]
    bad = photo_folder / "Probable" / f"bad_{kind}.jpg"
    make(bad)
    items = discover(photo_folder)
    with pytest.raises(BadImageError, match=message) as info:
        load_images(items, Preprocess(image_size=16))
    assert str(bad) in str(info.value)
    loaded = load_images(items, Preprocess(image_size=16), skip_bad=True)
    assert loaded.report.found == 19 and loaded.report.loaded == 18
    assert [p for p, _ in loaded.report.skipped] == [str(bad)]


def test_decompression_bomb_limit_is_kept(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", gradient_image(300, 300), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)  # 300² is > 2× the limit: an error
    with pytest.raises(BadImageError, match="decompression-bomb"):
        load_image(path, Preprocess(image_size=16))


def test_missing_heif_support_says_how_to_install(tmp_path, monkeypatch):
    import training.data.images as images

    monkeypatch.setattr(images, "HEIF_AVAILABLE", False)
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(BadImageError, match=r"pillow-heif.*\[heic\]"):
        load_image(path, Preprocess(image_size=16))


def test_duplicates_reported_and_conflicting_labels_named(photo_folder):
    src = photo_folder / "Probable" / "p0.jpg"
    (photo_folder / "Probable" / "copy.jpg").write_bytes(src.read_bytes())
    loaded = load_images(discover(photo_folder), Preprocess(image_size=16))
    assert loaded.report.loaded == 18 and len(loaded.report.duplicates) == 1
    (photo_folder / "Improbable" / "also.jpg").write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="the same image is labelled twice") as info:
        load_images(discover(photo_folder), Preprocess(image_size=16))
    assert "also.jpg (Improbable)" in str(info.value) and "(Probable)" in str(info.value)


def test_empty_class_folder_is_named(photo_folder):
    (photo_folder / "Dead").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*Dead is empty"):
        discover(photo_folder)


def test_csv_manifest(photo_folder, tmp_path):
    manifest = photo_folder / "ratings.csv"
    manifest.write_text("path,label\nProbable/p0.jpg,Probable\nImprobable/i0.png,Improbable\n")
    assert [(p.name, lab) for p, lab in discover(manifest)] == [("p0.jpg", "Probable"), ("i0.png", "Improbable")]
    manifest.write_text("path,label\nProbable/missing.jpg,Probable\n")
    with pytest.raises(FileNotFoundError, match=r"line 2: file not found: .*missing\.jpg"):
        discover(manifest)
    manifest.write_text("file,rating\nx.jpg,Probable\n")
    with pytest.raises(ValueError, match="needs the columns 'path,label'"):
        discover(manifest)


def test_preprocessing_is_faster_with_draft_and_cache(tmp_path):
    """Not a timing test: the draft path decodes far fewer pixels (checked via Pillow's reported size)."""
    path = save(tmp_path / "big.jpg", gradient_image(1600, 1200), "JPEG")
    with Image.open(path) as im:
        im.draft("L", (216, 216))
        assert im.size[0] <= 800  # decoded at ≤ 1/2 scale instead of full size


# --- labels and splits ---
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_group_the_three_ratings(name):
    labels = ["Probable", "Possible", "Improbable", "Improbable"]
    index, excluded = SCENARIOS[name].resolve(labels)
    expected = {
        "Pr_Im": ([0, -1, 1, 1], {"Possible": 1}),
        "PrPo_Im": ([0, 0, 1, 1], {}),
        "Pr_PoIm": ([0, 1, 1, 1], {}),
        "Pr_Po_Im": ([0, 1, 2, 2], {}),
    }[name]
    assert index.tolist() == expected[0] and excluded == expected[1]


def test_unknown_label_is_named():
    with pytest.raises(ValueError, match=r"label\(s\) \['Dead'\] are not in grouping 'Pr_Po_Im'"):
        SCENARIOS["Pr_Po_Im"].resolve(["Probable", "Dead"])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_grouping_file_with_wildcard(tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    if suffix == ".toml":
        path.write_text('name = "tree_vs_not"\n[classes]\ntree = ["*"]\nnot_a_tree = ["not_a_tree"]\n')
    else:
        path.write_text(json.dumps({"name": "tree_vs_not", "classes": {"tree": ["*"], "not_a_tree": ["not_a_tree"]}}))
    g = load_grouping(path)
    index, _ = g.resolve(["oak", "not_a_tree", "palm"])
    assert g.class_names == ["tree", "not_a_tree"] and index.tolist() == [0, 1, 0]


def test_grouping_naming_a_missing_label_fails():
    g = Grouping("g", {"a": ("oak",), "b": ("elm",)})
    with pytest.raises(ValueError, match=r"class\(es\) \['b'\] have no images \(labels \[\['elm'\]\]"):
        g.resolve(["oak", "oak"])


def test_splits_are_stratified_seeded_and_disjoint_by_content(photo_folder):
    loaded = load_images(discover(photo_folder), Preprocess(image_size=16))
    y = np.array([["Improbable", "Possible", "Probable"].index(lab) for lab in loaded.labels])
    train, val = stratified_split(y, val_fraction=0.5, seed=3)
    again = stratified_split(y, val_fraction=0.5, seed=3)
    assert train.tolist() == again[0].tolist()
    assert not {loaded.digests[i] for i in train} & {loaded.digests[i] for i in val}
    assert sorted(np.bincount(y[val]).tolist()) == [3, 3, 3]
    folds = stratified_folds(y, 3, seed=0)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(len(y)))  # every image validated exactly once
    for tr, va in folds:
        assert not {loaded.digests[i] for i in tr} & {loaded.digests[i] for i in va}


def test_too_few_images_to_stratify_is_explained():
    with pytest.raises(ValueError, match="too few images to stratify into 2 parts"):
        stratified_split(np.array([0, 0, 1]), class_names=["a", "b"])


# --- Model 1 ---
@pytest.mark.parametrize(("size", "channels", "classes"), [(108, 1, 2), (224, 1, 2), (108, 3, 3), (64, 1, 10)],
                         ids=["108-gray-2", "224-gray-2", "108-rgb-3", "64-gray-10"])
def test_model1_parameter_count(size, channels, classes):
    model = Model1(classes)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((size, size, channels))))["params"]
    assert count_params(params) == model1_param_count(size, channels, classes)
    if (size, channels, classes) == (108, 1, 2):
        assert count_params(params) == 2_298_050  # "about 2.30M"


def test_model1_rejects_a_batch_and_bad_activation():
    with pytest.raises(ValueError, match=r"one image \(H, W, C\); got shape \(2, 32, 32, 1\)"):
        Model1(2).init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        Model1(2, activation="swish2").init(jax.random.PRNGKey(0), jnp.zeros((32, 32, 1)))


def tiny_problem(n=24, size=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 0.2, (n, size, size, 1)).astype(np.float32)
    x[y == 1, : size // 2] += 0.7  # class 1: bright top half
    return x, y.astype(np.int32)


def small_config(**kw):
    base = dict(image_size=24, batch_size=8, epochs=3, head_units=(16, 8), first_kernel=3, learning_rate=1e-3)
    base.update(kw)
    return get_config("lab-2020", **base)


def test_train_step_is_finite_no_recompile_and_overfits_a_tiny_batch():
    x, y = tiny_problem(n=8)
    config = small_config(dropout_rate=0.0)
    model = create_model(config, 2)
    state = create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(0))
    step = make_train_step(model)
    batch = make_batch(x, y, np.arange(8), 8, np.ones(2, np.float32))
    losses = []
    for i in range(40):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
        if i == 0:
            compiled = step._cache_size()
    assert step._cache_size() == compiled
    assert all(np.isfinite(losses)) and losses[-1] < 0.05 < losses[0]


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_the_initializer_compiled_to_run_once_draws_the_default_compilations_bits(channels):
    """The initial weights are drawn by a program compiled at LLVM's level 1 on CPU (it runs once; it compiles
    in about half the time): every array is bit for bit what the default compilation draws from the same key."""
    from models.common import run_once_compiler_options
    from training.loop.steps import _initializer

    shape = (24, 24, channels)  # the module's pinned size and classes: the gray program is the other tests' one
    model = create_model(small_config(), 2)
    key = jax.random.PRNGKey(7)
    fast = _initializer(model, shape)(key)
    default = jax.jit(lambda k: model.init({"params": k}, jnp.zeros(shape, jnp.float32))["params"])(key)
    assert run_once_compiler_options() == ({"xla_backend_optimization_level": 1}
                                           if jax.default_backend() == "cpu" else None)
    pairs = list(zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree_util.tree_leaves(default), strict=True))
    assert len(pairs) == 16 and all(np.asarray(b).std() > 0 for (p, _), b in pairs if p[-1].key == "kernel")
    for (path, a), b in pairs:
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), path
    # inside another trace (a checkpoint's template is jax.eval_shape of create_state) it is inlined there
    shapes = jax.eval_shape(lambda: _initializer(model, shape)(jax.random.PRNGKey(7)))
    assert jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes) == \
        jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), fast)


@pytest.mark.parametrize("schedule", [None, "cosine"], ids=["constant", "cosine"])
def test_the_next_folds_state_runs_the_compiled_step_and_init_compiles_once(schedule):
    """A second fold (another seed, another number of steps per epoch) builds its state and trains with the
    programs the first one compiled: one initializer, one train step (with a schedule, one per number of
    steps: the rate depends on it)."""
    x, y = tiny_problem(n=8)
    config = small_config(dropout_rate=0.0, lr_schedule=schedule)
    model = create_model(config, 2)
    batch = make_batch(x, y, np.arange(8), 8, np.ones(2, np.float32))
    step = make_train_step(model)
    assert make_train_step(create_model(config, 2)) is step  # an equal model: the same function
    start, sizes = step._cache_size(), []  # (another test in this process may have compiled it already)
    for fold, steps_per_epoch in enumerate((3, 3, 4)):
        state = create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(fold), steps_per_epoch=steps_per_epoch)
        step(state, batch, jax.random.PRNGKey(0))
        sizes.append(step._cache_size())
    assert sizes[0] <= start + 1 and sizes[1] == sizes[0]
    assert sizes[2] == sizes[1] + (0 if schedule is None else 1)
    from training.loop.steps import _initializer

    assert _initializer(model, tuple(x.shape[1:]))._cache_size() == 1  # three keys, one compiled initializer
    assert state.step.dtype == jnp.int32 and np.isfinite(float(step(state, batch, jax.random.PRNGKey(1))[1]["loss"]))


@pytest.mark.slow
def test_fit_writes_checkpoints_and_resume_continues(tmp_path):
    x, y = tiny_problem()
    config = small_config(epochs=2)
    first = fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path, progress=False)
    assert [h["epoch"] for h in first.history] == [1, 2]
    for which in ("best", "last"):
        assert (tmp_path / "checkpoints" / which).is_dir()
    assert json.loads((tmp_path / "checkpoints" / "config.json").read_text())["class_names"] == ["dark", "bright"]
    resumed = fit(small_config(epochs=3), x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path,
                  resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    straight = fit(small_config(epochs=3), x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path / "s",
                   progress=False)
    np.testing.assert_allclose([h["train_loss"] for h in resumed.history],
                               [h["train_loss"] for h in straight.history], rtol=1e-5)
    model, params, cfg, names = load_trained(tmp_path)
    assert names == ["dark", "bright"] and cfg.epochs == 3


def test_refit_trains_the_chosen_epochs_on_the_whole_training_part_and_keeps_that_model(tmp_path):
    """``refit``: the epoch is chosen on the inner split (the selection run, kept in ``selection/``), then the
    network trains again on the whole training part for that many epochs (the same as a run on those photos with
    that epoch count and nothing chosen), and that model is saved and scored; the run's history stays the
    selection's, whose validation rows are honest. Without an inner split there is nothing to refit."""
    from training.data.dataset import Dataset
    from training.data.images import LoadReport
    from training.data.labels import Grouping
    from training.runs.folds import run_folds, splits_for

    x, y = tiny_problem(n=30)
    names = ["dark", "bright"]
    data = Dataset(x=x, y=y, class_names=names, paths=[f"p{i}.png" for i in range(30)],
                   digests=[f"{i:064x}" for i in range(30)], grouping=Grouping("folders", {n: (n,) for n in names}),
                   report=LoadReport(found=30, loaded=30), source="tiny")
    config = small_config(epochs=3, selection="inner", val_fraction=0.25, refit=True)
    (result,) = run_folds(data, config, tmp_path / "run", progress=False)
    chosen = result.best_epoch
    assert 1 <= chosen <= 3 and f"then {chosen} epochs on the whole training part" in result.selection
    selection = json.loads((tmp_path / "run" / "selection" / "history.json").read_text())
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == selection and len(selection) == 3
    tr, va = splits_for(data, config)[0]
    alone = fit(small_config(epochs=chosen, selection="last"), x[tr], y[tr], x[va], y[va], names, tmp_path / "alone",
                progress=False)
    _, saved, _, _ = load_trained(tmp_path / "run")
    diff = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), saved,
                                  alone.best_params)
    assert max(jax.tree_util.tree_leaves(diff)) == 0.0  # the saved model is that run, bit for bit
    np.testing.assert_allclose(result.val_probs, alone.val_probs, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="refit trains again for the epoch chosen on an inner split"):
        small_config(refit=True)  # lab-2020: the last epoch, nothing chosen


def test_a_training_photo_is_drawn_from_its_own_map_its_mirror_and_all_its_views():
    """``Maps.training``: what ``fit`` draws each epoch's map of a photo from, the photo's and its mirror
    image's maps and those of every view, of that photo only, in that order."""
    from training.runs.folds import Maps

    plain = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3, 1, 1)
    views = -np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3, 1, 1) - 1
    rows = np.array([4, 1])
    got = Maps(7, plain, views).training(rows)
    assert got.shape == (2, 8, 3, 1, 1)
    np.testing.assert_array_equal(got[:, :2], plain[rows])
    np.testing.assert_array_equal(got[:, 2:], views[rows])


def test_resume_after_a_kill_between_the_best_and_the_last_checkpoint(tmp_path):
    """A kill after ``best`` of epoch 2 was written but before ``last`` of epoch 2: --resume restarts from
    ``last`` = epoch 1, recomputes epoch 2 and replaces the ``best`` step already there."""
    import shutil

    x, y = tiny_problem()
    config = small_config(epochs=2, selection="last")  # "last": every epoch is saved as best
    fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path / "s", progress=False)
    killed = tmp_path / "k"
    fit(small_config(epochs=1, selection="last"), x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], killed,
        progress=False)
    shutil.copytree(tmp_path / "s" / "checkpoints" / "best" / "2", killed / "checkpoints" / "best" / "2")
    resumed = fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], killed, resume=True, progress=False)
    straight = json.loads((tmp_path / "s" / "history.json").read_text())
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    np.testing.assert_allclose([h["train_loss"] for h in resumed.history], [h["train_loss"] for h in straight],
                               rtol=1e-6)


def test_resume_after_a_kill_between_the_last_checkpoint_and_the_history_file(tmp_path):
    """A kill after the last epoch's checkpoints were written but before history.json was: --resume has no epoch
    left to run, and still leaves history.json whole (the checkpoint's history), as after an uninterrupted run."""
    x, y = tiny_problem()
    config = small_config(epochs=2)
    fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path, progress=False)
    whole = json.loads((tmp_path / "history.json").read_text())
    (tmp_path / "history.json").write_text(json.dumps(whole[:1]))  # as the kill left it
    resumed = fit(config, x[:16], y[:16], x[16:], y[16:], ["dark", "bright"], tmp_path, resume=True, progress=False)
    assert resumed.history == whole and json.loads((tmp_path / "history.json").read_text()) == whole
    assert (tmp_path / "history.csv").read_text().count("\n") == 3  # header and two epochs


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, y = tiny_problem()
    fit(small_config(epochs=1), x[:16], y[:16], x[16:], y[16:], ["a", "b"], tmp_path, progress=False)
    x_nan = x.copy()
    x_nan[0] = np.nan
    with pytest.raises(FloatingPointError, match=r"training loss became nan in epoch 2.*last good checkpoint"):
        fit(small_config(epochs=2), x_nan[:16], y[:16], x[16:], y[16:], ["a", "b"], tmp_path, resume=True,
            progress=False)
    _, params, _, _ = load_trained(tmp_path, "last")
    assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))


def test_metrics_and_majority_baseline():
    y = np.array([1] * 66 + [0] * 10)
    always_improbable = np.tile([0.0, 1.0], (76, 1))
    m = classification_metrics(y, always_improbable, ["Probable", "Improbable"])
    base = majority_baseline(np.array([1, 1, 0]), y, ["Probable", "Improbable"])
    # the lab's headline row: precision 87.9 / recall 100 / accuracy 86.8 is this baseline
    assert round(100 * m["accuracy"], 1) == 86.8
    assert round(100 * m["per_class"]["Improbable"]["precision"], 1) == 86.8
    assert m["per_class"]["Improbable"]["recall"] == 1.0 and m["balanced_accuracy"] == 0.5
    assert base["accuracy"] == m["accuracy"] and base["majority_class"] == "Improbable"


# --- devices ---
FOUR_DEVICES = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[1])
    from tests.test_training import tiny_problem, small_config
    from training.loop.devices import DataParallel
    from training.loop.steps import create_model, create_state, make_batch, make_batch_loss, make_train_step
    assert len(jax.devices()) == 4, jax.devices()
    x, y = tiny_problem(n=8)
    x = x.astype(np.float64)  # float64 arithmetic; the parameters (and so their gradients) stay float32
    config = small_config()
    model = create_model(config, 2)
    out = {}
    for n_dev in (1, 4):
        dp = DataParallel(jax.devices()[:n_dev])
        state = dp.put_replicated(create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(0)))
        batch = dp.put_batch(make_batch(x, y, np.arange(8), 8, np.ones(2, np.float32)))
        assert len(batch["x"].sharding.device_set) == n_dev
        loss, grads = jax.jit(jax.value_and_grad(make_batch_loss(model)))(state.params, batch, jax.random.PRNGKey(1))
        state, m = make_train_step(model)(state, batch, jax.random.PRNGKey(1))
        out[n_dev] = (float(loss), float(m["loss"]), jax.tree_util.tree_leaves(jax.device_get(grads)),
                      str(jax.tree_util.tree_leaves(grads)[0].dtype))
    rel = [float(np.linalg.norm(np.float64(a) - b) / max(np.linalg.norm(np.float64(b)), 1e-30))
           for a, b in zip(out[4][2], out[1][2])]
    print(json.dumps({"loss1": out[1][0], "loss4": out[4][0], "step_loss1": out[1][1], "step_loss4": out[4][1],
                      "worst_grad_rel": max(rel), "grad_dtype": out[1][3]}))
""")


@pytest.mark.slow
def test_one_step_on_four_devices_equals_one_device():
    """Data parallelism must give the same loss and gradients whatever the device count.

    Compared in float64 arithmetic: the sharded and unsharded reductions differ in order only,
    by O(n·2⁻⁵³) relative; the float32 gradients then differ by at most about one float32 ulp
    (2⁻²⁴ ≈ 6e-8) per element, hence the per-array bound 1e-6 on any CPU. (Parameters after an
    Adam step are not compared: Adam's g/(√v+ε) turns float32 reduction noise in near-zero
    gradients into differences of size lr.)"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(REPO)], capture_output=True, text=True,  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                          env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(result["loss1"]) and result["grad_dtype"] == "float32"
    assert abs(result["loss4"] - result["loss1"]) <= 1e-12 * abs(result["loss1"])
    assert result["step_loss4"] == pytest.approx(result["step_loss1"], rel=1e-12)
    assert result["worst_grad_rel"] <= 1e-6


@pytest.mark.parametrize("shape", [(8, 8, 3), (27, 27, 5), (13, 9, 2)], ids=["even", "odd", "mixed"])
def test_reshape_max_pool_equals_flax_max_pool(shape):
    import flax.linen as nn

    from models.model1 import max_pool_2x2

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    expected = nn.max_pool(x[None], (2, 2), strides=(2, 2))[0]
    np.testing.assert_array_equal(max_pool_2x2(x), expected)
    g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) ** 2))(x)
    g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x[None], (2, 2), strides=(2, 2))[0] ** 2))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12)  # no ties in random data: identical gradients


def test_lab_2020_preset_is_the_decks_setup_field_by_field():
    """The lab's Dec 2020 deck: grayscale Model 1, Adam 1e-3, batch 32, 4 epochs, one seeded 80:20 split,
    the 4th epoch scored; nothing the deck did not do (no class weights, standardization, augmentation,
    schedule, early stopping, flip averaging, calibration or referral)."""
    from training.loop.config import PRESETS, get_config

    c = get_config("lab-2020")
    deck = {"model": "model1", "rgb": False, "learning_rate": 1e-3, "batch_size": 32, "epochs": 4,
            "val_fraction": 0.2, "folds": 1, "selection": "last", "class_weights": None, "standardize": False,
            "augment": None, "lr_schedule": None, "patience": None, "tta_flip": False, "grad": "manual",
            "image_size": 108, "crop": "center", "calibration": "none", "refer_coverage": None}
    assert {k: getattr(c, k) for k in deck} == deck
    assert set(PRESETS["lab-2020"]) <= set(deck)  # the preset sets nothing outside the deck's list


def test_every_preset_is_one_typed_registry_entry_and_the_old_names_are_its_views():
    """One place defines a preset (training.loop.presets); PRESETS, FINETUNE_RECIPE, TOP_RECIPE, MLP_PRESETS and
    results.CONFIGS read it, read-only; every entry says what it is, and every TrainConfig one builds a config."""
    from training.loop import config, presets
    from training.runs import results

    registry = presets.REGISTRY
    views = [(config.PRESETS, "train"), (config.MLP_PRESETS, "mlp"), (results.CONFIGS, "table")]
    for view, kind in views:
        assert list(view) == [n for k, n in registry if k == kind]
        assert all(view[name] is registry[kind, name].settings for name in view), kind
    assert config.FINETUNE_RECIPE is registry["recipe", "all"].settings
    assert {**config.FINETUNE_RECIPE, **config.TOP_RECIPE} == registry["recipe", "top"].settings
    for (kind, name), entry in registry.items():
        assert entry.doc and (entry.kind, entry.name) == (kind, name)
        if kind in ("train", "table", "mnist"):
            get_config(entry.base or "lab-2020", **entry.settings)  # a valid config (checked when built)
    with pytest.raises(TypeError):
        config.PRESETS["lab-2020"]["epochs"] = 5  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown mlp preset 'network3'"):
        presets.preset("mlp", "network3")
    # the table's improved and pretrained rows are built on lab-2020 (no calibration) and take the defaults back
    defaults = config.TrainConfig(model="model1")
    assert presets._CALIBRATED == {"calibration": defaults.calibration, "refer_coverage": defaults.refer_coverage}
    assert results.config_for("pretrained", 240).calibration == defaults.calibration


@pytest.mark.parametrize("finetune", ["top", "all"])
def test_a_fine_tuned_preset_from_python_gets_the_recipe_the_command_gets(finetune):
    from experiments import train

    config = get_config("pretrained", finetune=finetune)
    assert config == train.config_from_args(train.parser().parse_args(["--finetune", finetune]))
    assert (config.learning_rate, config.head_init, config.top_views) == (3e-4, True, 8 if finetune == "top" else 0)
    assert get_config("pretrained", finetune=finetune, learning_rate=1e-3).learning_rate == 1e-3  # overrides win
    assert get_config("pretrained", finetune=finetune, recipe=False).learning_rate == 1e-2  # the preset alone


@pytest.mark.parametrize("preset", ["lab-2020", "improved", "pretrained"])
def test_a_config_survives_its_json_and_the_augmentation_is_one_object(preset):
    import json

    from training.data.augment import Augment
    from training.loop.config import TrainConfig, get_config

    config = get_config(preset)
    assert config.augment is None or isinstance(config.augment, Augment)
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_a_config_json_with_the_old_flat_augmentation_fields_still_loads():
    import json

    from training.data.augment import Augment
    from training.loop.config import TrainConfig, get_config

    old = {k: v for k, v in get_config("improved").to_json().items() if k != "augment"}
    old.update(augment=True, augment_crop_pad=4, augment_flip=False, augment_degrees=5.0, augment_brightness=0.2,
               augment_contrast=0.0)
    config = TrainConfig.from_json(json.loads(json.dumps(old)))
    assert config.augment == Augment(crop_pad=4, flip=False, max_degrees=5.0, brightness=0.2, contrast=0.0)
    old["augment"] = False
    assert TrainConfig.from_json(old).augment is None


@pytest.mark.parametrize("finetune", ["top", "all"])
def test_discriminative_rates_scale_each_stage_by_its_depth_below_the_classifier(finetune):
    """``block_lr_decay`` d: with plain SGD at rate 1 and unit gradients, a trainable parameter k stages below
    the classifier moves by exactly −d^k; frozen ones and the BatchNorm statistics do not move."""
    import optax

    from training.loop.optimizer import masked_optimizer

    leaf = lambda: {"kernel": np.ones((2, 2), np.float32)}  # noqa: E731
    bn = {"scale": np.ones(2, np.float32), "mean": np.ones(2, np.float32), "var": np.ones(2, np.float32)}
    params = {"backbone": {"conv_stem": leaf(), "bn_stem": dict(bn), **{f"block{i}": leaf() for i in range(4)},
                           "conv_head": leaf(), "bn_head": dict(bn)}, "head": leaf()}
    tx = masked_optimizer(optax.sgd(1.0), params, finetune, 2, block_lr_decay=0.5)
    grads = jax.tree_util.tree_map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    depth = {"head": 0, "conv_head": 1, "bn_head": 1, "block3": 2, "block2": 3, "block1": 4, "block0": 5,
             "conv_stem": 6, "bn_stem": 6}
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        names = [p.key for p in path]
        stage = names[1] if names[0] == "backbone" else names[0]
        trains = names[-1] not in ("mean", "var") and (finetune == "all" or depth[stage] <= 3)
        np.testing.assert_array_equal(u, -(0.5 ** depth[stage]) * np.ones_like(u) if trains else 0 * u, str(names))


def test_warmup_then_cosine_and_weight_decay_of_kernels_only():
    """warmup_epochs: the rate rises linearly from 0 over the first epoch, peaks at learning_rate, then decays
    (cosine) to 0. weight_decay λ (AdamW): with a zero gradient a kernel moves by −η_t λ w, a bias not at all."""
    import optax

    from training.loop.config import get_config
    from training.loop.optimizer import make_optimizer

    config = get_config("pretrained", learning_rate=1e-2, lr_schedule="cosine", warmup_epochs=1, epochs=4,
                        weight_decay=0.1)
    tx = make_optimizer(config, steps_per_epoch=10)
    params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    state = tx.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    moves = []
    for _ in range(40):
        updates, state = tx.update(zeros, state, params)
        moves.append(float(updates["kernel"][0, 0]))
        assert not np.any(np.asarray(updates["bias"]))
    rates = -np.array(moves) / (0.1 * 2.0)  # η_t
    expected = np.asarray([optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 40)(t) for t in range(40)])
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-9)
    assert rates[0] == 0 and np.argmax(rates) == 10 and rates[-1] < rates[20] < rates[10]


@pytest.mark.parametrize("flags, expected", [
    (["--finetune", "top"], {"learning_rate": 3e-4, "lr_schedule": "cosine", "warmup_epochs": 1, "head_init": True,
                             "top_views": 8, "grad": "manual"}),
    (["--finetune", "top", "--top-views", "0"], {"learning_rate": 3e-4, "top_views": 0}),
    (["--finetune", "all", "--lr", "1e-3", "--epochs", "3"], {"learning_rate": 1e-3, "epochs": 3, "head_init": True,
                                                            "top_views": 0, "grad": "manual"}),
    (["--finetune", "all", "--grad", "autodiff"], {"learning_rate": 3e-4, "grad": "autodiff"}),
    ([], {"learning_rate": 1e-2, "lr_schedule": None, "head_init": False, "augment": None, "top_views": 0,
          "grad": "autodiff"}),
    (["--finetune", "head"], {"learning_rate": 1e-2, "head_init": False, "grad": "autodiff"}),
    (["--preset", "lab-2020"], {"learning_rate": 1e-3, "head_init": False, "grad": "manual"}),
    (["--preset", "lab-2020", "--model", "resnet50", "--finetune", "all"], {"grad": "autodiff"}),
], ids=["top", "top-without-cached-maps", "all-with-flags", "all-autodiff", "no-flag", "head", "lab-2020",
        "resnet50-all"])
def test_finetune_gets_its_own_recipe_and_the_users_flags_win(flags, expected):
    from experiments import train

    config = train.config_from_args(train.parser().parse_args(flags))
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize("overrides", [dict(finetune="all"), dict(finetune="head"), dict(model="model1")],
                         ids=["all", "head", "model1"])
def test_cached_maps_are_refused_where_nothing_below_a_top_is_frozen(overrides):
    """``top_views`` caches the frozen blocks below a fine-tuned top: with anything else it is refused by name."""
    with pytest.raises(ValueError, match="top_views=2 caches the frozen blocks below a fine-tuned top"):
        get_config("pretrained", top_views=2, **{"finetune": "top", **overrides})
    assert get_config("pretrained", finetune="top", top_views=2).top_views == 2
