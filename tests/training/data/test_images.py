"""Photos → arrays: every format, EXIF and crops, bad files named, duplicates, manifests, the cache, splits."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_path
from training.data.cache import ImageCache
from training.data.decoding import BadImageError, Preprocess, load_image
from training.data.discovery import discover
from training.data.labels import stratified_folds, stratified_split
from training.data.loading import load_images


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
    import training.data.decoding as decoding

    monkeypatch.setattr(decoding, "HEIF_AVAILABLE", False)
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

