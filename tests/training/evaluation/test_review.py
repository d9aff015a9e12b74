"""The review page (training.evaluation.review): parsed, every link resolved, hostile input.

Synthetic CSVs and tiny generated photos only: no model is built or compiled here. The command's printing
(experiments.review) is tested in tests/experiments/test_cli.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from common.files import FileFormatError
from tests.helpers import HOSTILE_PHOTO_NAME as HOSTILE
from tests.helpers import REVIEW_CLASSES as CLASSES
from tests.helpers import review_photos, write_csv
from tests.helpers import review_predictions_csv as predictions_csv
from training.evaluation.review import (
    PAGE,
    Prediction,
    read_predictions,
    review_order,
    write_review,
)


class Page(HTMLParser):
    """Every element's tag and attributes, and the text, of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.elements if t == tag]


@pytest.fixture
def photos(tmp_path) -> Path:
    """Four tiny photos (tests/helpers.py ``review_photos``)."""
    return review_photos(tmp_path / "photos")


def resolves(page_dir: Path, url: str) -> bool:
    return (page_dir / unquote(url)).is_file()


def test_every_photo_is_on_the_page_and_every_link_resolves(tmp_path, photos):
    explain = tmp_path / "explain"
    explain.mkdir()
    Image.new("RGB", (8, 4)).save(explain / "a_explained.png")
    write_csv(tmp_path / "ratings.csv", ["path", "rater1"], [["a.jpg", "Possible"], ["sideways.jpg", "Probable"],
                                                             ["gone.jpg", "Probable"]])
    out = tmp_path / "review"
    s = write_review(predictions_csv(tmp_path), photos, out, explain=explain, ratings=tmp_path / "ratings.csv")
    assert (s.photos, s.thumbnails_made, s.referred, s.rated, s.disagreements, s.overlays, s.unmatched_ratings) \
        == (4, 4, 1, 2, 1, 1, 1)
    page = Page((out / PAGE).read_text(encoding="utf-8"))
    figures = page.all("figure")
    assert len(figures) == 4
    thumbs = [a for a in page.all("img")]
    assert sorted(a["alt"] for a in thumbs) == sorted(["a.jpg", "siteA/b.jpg", HOSTILE, "sideways.jpg"])
    assert all(a["loading"] == "lazy" for a in thumbs)
    links = [a["href"] for a in page.all("a")] + [a["src"] for a in thumbs]
    assert len(links) == 4 + 1 + 4  # originals, one Grad-CAM overlay, thumbnails
    assert all(resolves(out, url) for url in links), [u for u in links if not resolves(out, u)]
    assert not any(url.startswith(("http:", "https:", "//")) for url in links)  # nothing from the network
    originals = sorted((out / unquote(a["href"])).resolve() for a in page.all("a") if "class" not in a)
    assert originals == sorted(p.resolve() for p in photos.rglob("*.jpg"))
    # order: the disagreement (a.jpg, rated Possible) first, then the agreement, then uncertain-first
    assert [a["alt"] for a in thumbs] == ["a.jpg", "sideways.jpg", "siteA/b.jpg", HOSTILE]
    assert figures[0].get("class") == "d" and figures[2].get("data-r") == "1"
    with Image.open(out / unquote(thumbs[1]["src"])) as im:  # EXIF orientation applied: taller than wide
        assert im.format == "JPEG" and im.width < im.height
    assert len(page.all("script")) == 1 and len(page.all("style")) == 1  # ours, inline (no src)
    assert "src" not in page.all("script")[0]


def test_names_from_the_data_are_escaped(tmp_path, photos):
    """A hostile file name and a hostile class name arrive as text, never as markup."""
    evil_class = "</option><b onclick=x>Probable"
    write_csv(tmp_path / "p.csv", ["path", "predicted", "p_Safe", f"p_{evil_class}"],
              [[HOSTILE, evil_class, 0.25, 0.75], ["a.jpg", "Safe", 0.9, 0.1]])
    write_review(tmp_path / "p.csv", photos, tmp_path / "r")
    text = (tmp_path / "r" / PAGE).read_text(encoding="utf-8")
    page = Page(text)
    assert not page.all("b") and len(page.all("script")) == 1  # no element came from the data
    assert [a["alt"] for a in page.all("img")] == [HOSTILE, "a.jpg"]  # the thumbnails; no injected <img>
    assert all("onclick" not in a and "onerror" not in a for _, a in page.elements)
    assert [a["value"] for a in page.all("option")] == ["", "Safe", evil_class]
    assert HOSTILE in "".join(page.text) and evil_class in "".join(page.text)
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_no_overwrite_without_the_flag_and_no_symlinked_output(tmp_path, photos):
    csv_path = predictions_csv(tmp_path, refer=False)
    out = tmp_path / "r"
    write_review(csv_path, photos, out)
    before = (out / PAGE).read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_review(csv_path, photos, out)
    assert (out / PAGE).read_bytes() == before
    (out / "thumbs" / ("f" * 20 + ".jpg")).write_bytes(b"stale")  # a thumbnail of a photo no longer listed
    s = write_review(csv_path, photos, out, overwrite=True)
    assert (s.thumbnails_made, s.thumbnails_reused, s.referred) == (0, 4, None)  # unchanged photos: reused
    assert len(os.listdir(out / "thumbs")) == 4 and not (out / "thumbs" / ("f" * 20 + ".jpg")).exists()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileExistsError, match="symlink"):
        write_review(csv_path, photos, link)
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_missing_or_broken_photo_gets_a_card_without_a_dead_link(tmp_path, photos):
    (photos / "a.jpg").write_bytes(b"not a jpeg")
    (photos / "sideways.jpg").unlink()
    s = write_review(predictions_csv(tmp_path), photos, tmp_path / "r")
    assert sorted(p for p, _ in s.missing) == ["a.jpg", "sideways.jpg"]
    page = Page((tmp_path / "r" / PAGE).read_text(encoding="utf-8"))
    assert len(page.all("figure")) == 4 and len(page.all("img")) == 2
    assert all(resolves(tmp_path / "r", a["href"]) for a in page.all("a"))


def _rows(n_bad: dict) -> list[list]:
    row = {"path": "a.jpg", "predicted": "Probable", "p_Improbable": "0.1", "p_Possible": "0.1",
           "p_Probable": "0.8", "refer": "false"}
    row.update(n_bad)
    return [list(row.values())]


@pytest.mark.parametrize("header, rows, field", [
    (["path", "p_Probable"], [["a.jpg", "1"]], "line 1"),  # no 'predicted'
    (["path", "predicted"], [["a.jpg", "x"]], "line 1"),  # no probability column
    (["path", "path", "predicted", "p_A"], [["a", "a", "A", "1"]], "line 1"),  # a column twice
    (None, _rows({"p_Probable": "nan"}), "line 2: p_Probable"),
    (None, _rows({"p_Possible": "inf"}), "line 2: p_Possible"),
    (None, _rows({"p_Possible": "-0.5", "p_Probable": "1.4"}), "line 2: p_Possible"),
    (None, _rows({"p_Probable": "0.1"}), "line 2"),  # sums to 0.3
    (None, _rows({"path": "../../etc/passwd"}), "line 2: path"),
    (None, _rows({"path": "/etc/passwd"}), "line 2: path"),
    (None, _rows({"predicted": "Dead"}), "line 2: predicted"),
    (None, _rows({"refer": "maybe"}), "line 2: refer"),
    (None, _rows({"path": "x" * (200 << 10)}), "line 2"),  # a field over 128 KiB
    (None, _rows({}) + [["a.jpg", "Probable", "0.1", "0.1", "0.8", "true"]], "line 3: path"),  # twice
    (None, [["a.jpg", "Probable", "0.2"]], "line 2"),  # too few fields
], ids=["no-predicted", "no-probabilities", "duplicate-column", "nan", "inf", "out-of-range", "sum",
        "dot-dot", "absolute", "unknown-class", "bad-refer", "huge-field", "path-twice", "short-row"])
def test_a_hostile_csv_is_one_error_naming_the_file_and_field(tmp_path, photos, header, rows, field):
    header = header or ["path", "predicted", *[f"p_{c}" for c in CLASSES], "refer"]
    bad = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(FileFormatError) as info:
        write_review(bad, photos, tmp_path / "r")
    assert info.value.path == str(bad) and info.value.field == field, str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_a_fifo_or_empty_file_is_refused_without_blocking(tmp_path, photos):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(FileFormatError, match="regular file"):
        read_predictions(fifo)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        read_predictions(tmp_path / "empty.csv")


def test_order_is_uncertain_first_then_by_margin():
    rows = [Prediction("sure", "A", (0.9, 0.1, 0.0)), Prediction("wide", "A", (0.5, 0.1, 0.4)),
            Prediction("close", "A", (0.5, 0.45, 0.05)), Prediction("low", "B", (0.3, 0.4, 0.3))]
    assert [rows[i].path for i in review_order(rows)] == ["low", "close", "wide", "sure"]
    ratings = {"sure": "B", "wide": "A"}  # sure disagrees, wide agrees, the rest unrated
    assert [rows[i].path for i in review_order(rows, ratings)] == ["sure", "wide", "low", "close"]


def test_five_thousand_predictions_make_a_small_page_quickly(tmp_path):
    """5,000 rows and 15 classes (the trees data's), no photos on disk: the HTML stays under 5 MB."""
    names = [f"class_{k:02d}" for k in range(14)] + ["not_a_tree"]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(names)), 5000)
    rows = [[f"site_{i % 50:03d}/IMG_2024{i:06d}.jpg", names[int(p.argmax())], *map(float, p),
             "true" if p.max() < 0.2 else "false"] for i, p in enumerate(probs)]
    csv_path = write_csv(tmp_path / "p.csv", ["path", "predicted", *[f"p_{n}" for n in names], "refer"], rows)
    (tmp_path / "photos").mkdir()
    start = time.perf_counter()
    s = write_review(csv_path, tmp_path / "photos", tmp_path / "r", workers=2)
    seconds = time.perf_counter() - start
    assert s.photos == 5000 and len(s.missing) == 5000
    assert s.html_bytes == (tmp_path / "r" / PAGE).stat().st_size <= 5_000_000, s.html_bytes
    assert seconds < 30, seconds  # a bound against a quadratic blow-up, not a speed measurement
    assert (tmp_path / "r" / PAGE).read_text(encoding="utf-8").count("<figure ") == 5000  # (parsed: above)


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome installed: the page is checked by parsing only")
def test_in_a_real_browser_the_page_filters_by_class(tmp_path, photos):
    """Headless Chromium runs the page's JavaScript from disk, with the network off: the view in the
    address (#class=Probable&gradcam=1) leaves the two Probable photos shown, a.jpg with its overlay."""
    out = tmp_path / "r"
    explain = tmp_path / "explain"
    explain.mkdir()
    Image.new("RGB", (8, 4)).save(explain / "a_explained.png")
    write_review(predictions_csv(tmp_path), photos, out, explain=explain)
    url = (out / PAGE).resolve().as_uri() + "#class=Probable&gradcam=1"
    try:
        dom = subprocess.run([BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",  # noqa: S603 (an installed browser and a page the test made; no shell)
                              "--proxy-server=127.0.0.1:9", "--user-data-dir=" + str(tmp_path / "profile"),
                              "--virtual-time-budget=2000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"{BROWSER} did not run headless here ({type(exc).__name__})")
    page = Page(dom)
    shown = [a for a in page.all("figure") if "hidden" not in a]
    assert len(page.all("figure")) == 4 and [a["data-p"] for a in shown] == ["Probable", "Probable"]
    assert "2 of 4 shown" in dom
    overlays = [a for a in page.all("img") if a.get("class") == "g"]
    assert len(overlays) == 1 and resolves(out, overlays[0]["src"])


def test_hostile_ratings_are_refused_and_overlays_outside_the_explain_folder_ignored(tmp_path, photos):
    csv_path = predictions_csv(tmp_path)
    huge = write_csv(tmp_path / "huge.csv", ["path", "rater1"], [["a.jpg", "x" * (200 << 10)]])
    with pytest.raises(FileFormatError) as info:
        write_review(csv_path, photos, tmp_path / "o", ratings=huge)
    assert info.value.path == str(huge) and info.value.field == "line 2"
    ratings = write_csv(tmp_path / "r.csv", ["path", "rater1"], [["a.jpg", "Probable"]])
    with pytest.raises(FileFormatError, match="rater9"):
        write_review(csv_path, photos, tmp_path / "o", ratings=ratings, rater="rater9")
    assert not (tmp_path / "o").exists()
    explain = tmp_path / "explain"
    explain.mkdir()
    Image.new("RGB", (8, 4)).save(tmp_path / "secret.png")
    Image.new("RGB", (8, 4)).save(explain / "inside.png")
    (explain / "link.png").symlink_to(tmp_path / "secret.png")
    write_csv(explain / "explanations.csv", ["path", "predicted", "probability", "png"],
              [["a.jpg", "Probable", "0.8", str(tmp_path / "secret.png")],  # absolute, outside
               ["siteA/b.jpg", "Possible", "0.4", "../secret.png"],  # climbs out
               ["sideways.jpg", "Probable", "0.9", "link.png"],  # a link inside pointing out
               [HOSTILE, "Improbable", "0.6", "inside.png"]])
    s = write_review(csv_path, photos, tmp_path / "o", explain=explain)
    assert s.overlays == 1
    cams = [a["href"] for a in Page((tmp_path / "o" / PAGE).read_text(encoding="utf-8")).all("a")
            if a.get("class") == "c"]
    assert [unquote(h) for h in cams] == ["../explain/inside.png"]


def test_a_grouped_model_is_compared_with_the_ratings_after_map():
    from training.evaluation.review import disagreements

    rows = [Prediction("a", "Probable+Possible", (0.7, 0.3)), Prediction("b", "Improbable", (0.4, 0.6))]
    ratings = {"a": "Probable", "b": "Probable"}
    assert disagreements(rows, ratings) == {"a", "b"}
    assert disagreements(rows, ratings, {"Probable+Possible": "Probable"}) == {"b"}


def test_a_file_name_that_is_not_utf8_is_linked_byte_for_byte(tmp_path):
    from urllib.parse import unquote_to_bytes

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "photos" / os.fsdecode(b"caf\xe9.jpg"))
    (tmp_path / "p.csv").write_bytes(b"path,predicted,p_A,p_B\r\ncaf\xe9.jpg,A,0.6,0.4\r\n")  # as predict writes it
    s = write_review(tmp_path / "p.csv", tmp_path / "photos", tmp_path / "o")
    assert s.thumbnails_made == 1 and not s.missing
    page = Page((tmp_path / "o" / PAGE).read_text(encoding="utf-8"))
    assert [a["alt"] for a in page.all("img")] == ["caf\ufffd.jpg"]
    assert [unquote_to_bytes(a["href"]) for a in page.all("a")] == [b"../photos/caf\xe9.jpg"]
