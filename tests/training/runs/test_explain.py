"""explain and agreement as library calls: the typed reports match the files they wrote; PNG names are safe, bounded
and unique (case- and normalization-insensitively) within a run."""

import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import read_predictions


def _photo(path, shade, rng, size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rng.normal(shade, 30, (size, size, 3)), 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def odd_photos(tiny_run, tmp_path_factory):
    """The session's tiny run, and a folder of photos whose names collide once made safe: by case, by an unsafe
    character, by a path flattened."""
    tmp = tmp_path_factory.mktemp("explain-odd")
    rng = np.random.default_rng(1)
    names = ["Tree.png", "tree.png", "a b.png", "a_b.png", "site/x.png", "site__x.png", "Tree.PNG"]
    for i, name in enumerate(names):
        _photo(tmp / "odd" / name, 40 * i, rng)
    return tiny_run[0], tmp / "odd", names


def test_explain_photos_report_matches_its_files_and_png_names_are_distinct(odd_photos, tmp_path):
    from training.runs.explain import ExplainOptions, explain_photos

    run, odd, names = odd_photos
    (odd / "notes.txt").write_text("not a photo")
    (odd / "broken.png").write_bytes(b"not a png")
    try:
        report = explain_photos(run, [str(odd)], tmp_path / "x",
                                ExplainOptions(methods=("grad_cam", "grad_cam"), skip_bad=True, progress=False))
    finally:
        (odd / "notes.txt").unlink()
        (odd / "broken.png").unlink()
    out = tmp_path / "x"
    assert report.methods == ("grad_cam",) and report.engine and report.out == str(out)
    assert [p for p, _ in report.skipped] == ["broken.png"]
    assert [Path(p).name for p, _ in report.ignored] == ["notes.txt"]
    assert sorted(r.path for r in report.rows) == sorted(names)
    written = read_predictions(report.csv)  # the CSV is the report's rows, column for column
    assert [r["path"] for r in written] == [r.path for r in report.rows]
    assert [r["png"] for r in written] == [r.png for r in report.rows]
    for row, w in zip(report.rows, written, strict=True):
        assert w["predicted"] == row.predicted and list(row.probabilities) == ["a", "b"]
        assert [w["p_a"], w["p_b"]] == pytest.approx(list(row.probabilities.values()), abs=1e-6)
        assert row.probability == row.probabilities[row.predicted] and set(row.as_dict()) == {
            "path", "predicted", "p_a", "p_b", "probability", "png"}
    pngs = [r.png for r in report.rows]
    keys = {unicodedata.normalize("NFKD", p).casefold() for p in pngs}
    assert len(keys) == len(names)  # Tree/tree, 'a b'/a_b, site/x and site__x: one PNG each
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.rsplit("/", 1)[-1] for p in pngs),
                                                           "explanations.csv"])
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 160
    line = report.closing_line()
    assert line.startswith(f"{len(names)} photos explained (grad_cam; probabilities by {report.engine}): "
                           f"{out / 'explanations.csv'} and {len(names)} PNGs in {out}")
    assert line.endswith("; 1 bad files skipped; 1 entries left out (not photos)")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/photo.jpg", "a\\b\x00c.png", "\u6728" * 400 + ".jpg",
                                  "x" * 1000 + ".png", "....", "%2e%2e/ok.png"],
                         ids=["dot-dot", "absolute", "backslash-nul", "cjk-400", "ascii-1000", "dots", "escaped"])
def test_png_names_stay_inside_out_plain_and_bounded(tmp_path, name):
    from training.runs.explain import PngNames

    names = PngNames(tmp_path)
    first, second = names.next(name), names.next(name.upper())
    for path in (first, second):
        assert path.parent == tmp_path and path.name.endswith("_explained.png")
        assert len(path.name.encode("utf-8")) <= 255 and not path.name.startswith(".")
        assert not set(path.name) & set("/\\\0")
    assert first != second and first.name.casefold() != second.name.casefold()


def test_png_names_of_letters_beyond_ascii_are_kept_and_unique_in_any_case(tmp_path):
    from training.runs.explain import PngNames

    names = PngNames(tmp_path)
    got = [names.next(n).name for n in ("site/café.png", "SITE/CAFÉ.png", unicodedata.normalize("NFD", "café.png"))]
    assert got[:2] == ["site__café_explained.png", "SITE__CAFÉ_2_explained.png"]
    assert len({unicodedata.normalize("NFKD", g).casefold() for g in got}) == 3


def test_compare_ratings_report_matches_its_files(tmp_path):
    from training.runs.agreement import AgreementOptions, compare_ratings

    (tmp_path / "p.csv").write_text("path,predicted\nx/a.jpg,Probable+Possible\nx/b.jpg,Improbable\n"
                                    "x/c.jpg,Probable+Possible\n")
    (tmp_path / "r.csv").write_text("path,r1\na.jpg,Probable\nb.jpg,Improbable\nc.jpg,Improbable\n")
    options = AgreementOptions(order=("Improbable", "Probable"), relabel=(("Probable+Possible", "Probable"),))
    report = compare_ratings(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "o", options)
    (row,) = report.rows
    assert row.pair == "model vs r1" and row.n == report.rated == 3 and row.agreement == pytest.approx(2 / 3)
    assert report.markdown == (tmp_path / "o" / "agreement.md").read_text(encoding="utf-8")
    assert report.table == str(tmp_path / "o" / "agreement.md")
    assert report.confusion_tables == [str(tmp_path / "o" / "confusion_model_vs_r1.md")]
    assert "| model vs r1 | 3 | 0.6667 |" in report.markdown
    assert report.closing_line() == (f"3 rated photos compared (1 pairs): table {tmp_path / 'o' / 'agreement.md'} "
                                     f"(and .csv), confusion tables {tmp_path / 'o'}/confusion_*.md")
    with pytest.raises(FileExistsError, match="agreement.md exists"):  # the earlier report is kept
        compare_ratings(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "o", options)
