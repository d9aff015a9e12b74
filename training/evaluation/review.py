"""A review page for a folder of predictions: one self-contained HTML file an assessor opens from disk.

Input: the CSV ``experiments.predict`` writes (``path`` relative to the photos' folder, ``predicted``, one
``p_<class>`` column per class, and a ``refer`` column, ``true``/``false``, where the run refers photos),
the photos' folder, and optionally explain's Grad-CAM PNGs and a person's ratings (the CSV
``experiments.agreement`` reads: ``path`` and rating columns).

Output, in one folder: ``index.html`` and ``thumbs/`` (small JPEGs, EXIF orientation applied, named by a
digest of the photo's path, size and time, so a second run reuses them). The page links each thumbnail to
the original photo and, where explain drew one, shows the Grad-CAM overlay on a click (or on every card). Every link is
relative, the CSS and the JavaScript are inline: it needs no network and no server. Cards are sorted
uncertain-first: by the top probability ``max_k p_k`` ascending, then by the margin ``p_(1) − p_(2)``
between the two largest; with ratings the photos where the person and the model disagree come first,
then the agreements, then the photos no one rated. The page filters by predicted class, by referral and
by disagreement (inline JavaScript; without it every card is shown); the filter is kept in the address
(``index.html#class=Probable&referred=1&disagreements=1&gradcam=1``), so a view can be bookmarked.
Thumbnails load lazily (``loading="lazy"``), and the HTML costs well under 1 KB a photo (5,000 photos,
15 classes: 2.5 MB).

Every name from the data (paths, class names, ratings) is HTML-escaped, links are percent-encoded, and
the output is written atomically into a folder that is not a symlink. A malformed CSV (wrong columns,
a field over 128 KiB, a non-finite or out-of-range probability, a path leaving the photos' folder) is
one :class:`~common.files.FileFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import os
import re
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from common.files import FileFormatError, atomic_open, output_dir, read_csv_checked
from training.evaluation.agreement import match_paths

MAX_CSV_BYTES = 64 << 20  # predict's CSV for 5,000 photos is ~0.3 MB; this allows ~1,000,000 rows
MAX_FIELD = 128 << 10  # one CSV cell
THUMB_SIZE = 192  # the longer side of a thumbnail, pixels
PAGE = "index.html"
THUMBS = "thumbs"
_THUMB_NAME = re.compile(r"^[0-9a-f]{20}\.jpg$")  # what this module writes into thumbs/, and only that
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}


@dataclass(frozen=True)
class Prediction:
    """One row of predict's CSV: the photo's path (relative to the photos' folder), the predicted class,
    the probability of each class, and the referral flag (``None`` when the CSV has no ``refer`` column)."""

    path: str
    predicted: str
    probs: tuple[float, ...]
    refer: bool | None = None

    @property
    def top(self) -> float:
        """The largest probability, ``max_k p_k``."""
        return max(self.probs)

    @property
    def margin(self) -> float:
        """``p_(1) − p_(2)``: the gap between the two largest probabilities (1 for a single class)."""
        ranked = sorted(self.probs, reverse=True)
        return ranked[0] - ranked[1] if len(ranked) > 1 else 1.0


@dataclass(frozen=True)
class Predictions:
    """predict's CSV, parsed and checked once (:func:`read_predictions`)."""

    source: Path
    class_names: tuple[str, ...]
    rows: tuple[Prediction, ...]
    has_refer: bool


@dataclass
class ReviewSummary:
    """What :func:`write_review` wrote and counted."""

    page: Path
    photos: int
    thumbnails_made: int = 0
    thumbnails_reused: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (path, why no thumbnail)
    referred: int | None = None
    rated: int = 0
    disagreements: int = 0
    unmatched_ratings: int = 0
    overlays: int = 0
    html_bytes: int = 0


# ---- reading: predict's CSV, a person's ratings, explain's overlays -------------------------------------------

def _csv_rows(path: Path, what: str, *, written: bool = True) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line, cells)])`` of a CSV read by :func:`~common.files.read_csv_checked` (a regular
    file of at most :data:`MAX_CSV_BYTES`, cells of at most :data:`MAX_FIELD`; names that are not UTF-8 kept
    byte for byte, as predict writes them; ``written``: a CSV the project wrote, read back through its CSV rule)."""
    table = read_csv_checked(path, what, max_bytes=MAX_CSV_BYTES, max_field=MAX_FIELD, errors="surrogateescape",
                             written=written)
    return table.columns, [(line, [row[c] for c in table.columns]) for line, row in zip(table.lines, table.rows,
                                                                                          strict=True)]


def _relative_path(text: str, path: Path, where: str) -> str:
    """A photo's path as predict writes it: relative, inside the photos' folder (no ``..``, no root)."""
    p = PurePosixPath(text.replace("\\", "/"))
    if not text or "\0" in text or p.is_absolute() or ".." in p.parts or text.startswith("/"):
        raise FileFormatError(path, where, f"{text!r} is not a path inside the photos' folder")
    return p.as_posix()


def read_predictions(path: str | Path) -> Predictions:
    """predict's CSV as a :class:`Predictions`: columns ``path``, ``predicted``, ``p_<class>`` (one or more)
    and optionally ``refer``; other columns are ignored. Each probability is finite and in [0, 1], each row's
    sum 1 (to 1e-3), ``predicted`` one of the classes, each path given once."""
    path = Path(path)
    what = "a predictions CSV written by experiments.predict"
    header, rows = _csv_rows(path, what)
    prob_columns = [c for c in header if c.startswith("p_") and len(c) > 2]
    missing = [c for c in ("path", "predicted") if c not in header] + ([] if prob_columns else ["p_<class>"])
    if missing:
        raise FileFormatError(path, "line 1", f"needs the column(s) {missing} (has {header[:12]}): expected {what}")
    if not rows:
        raise FileFormatError(path, "", "no predictions (a header and no rows)")
    class_names = tuple(c[2:] for c in prob_columns)
    at = {c: i for i, c in enumerate(header)}
    has_refer = "refer" in at
    seen: dict[str, int] = {}
    out = []
    for line, cells in rows:
        rel = _relative_path(cells[at["path"]], path, f"line {line}: path")
        if rel in seen:
            raise FileFormatError(path, f"line {line}: path", f"{rel!r} is given twice (first on line {seen[rel]})")
        seen[rel] = line
        predicted = cells[at["predicted"]]
        if predicted not in class_names:
            raise FileFormatError(path, f"line {line}: predicted",
                                  f"{predicted[:80]!r} is not one of the classes {list(class_names)[:12]}")
        probs = []
        for c in prob_columns:
            try:
                value = float(cells[at[c]])
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and -1e-6 <= value <= 1 + 1e-6):
                raise FileFormatError(path, f"line {line}: {c}",
                                      f"{cells[at[c]][:40]!r} is not a probability (a finite number in [0, 1])")
            probs.append(min(max(value, 0.0), 1.0))
        if abs(sum(probs) - 1) > 1e-3:
            raise FileFormatError(path, f"line {line}", f"the probabilities sum to {sum(probs):.6g}, not 1")
        refer = None
        if has_refer:
            flag = cells[at["refer"]].strip().lower()
            if flag not in _TRUE | _FALSE:
                raise FileFormatError(path, f"line {line}: refer", f"{flag[:40]!r} is neither true nor false")
            refer = flag in _TRUE
        out.append(Prediction(rel, predicted, tuple(probs), refer))
    return Predictions(path, class_names, tuple(out), has_refer)


def read_ratings(path: str | Path, predicted: Sequence[str], *,
                 rater: str | None = None) -> tuple[str, dict[str, str], int]:
    """``(rater, {predicted path: rating}, unmatched)`` from a ratings CSV (a ``path`` column and one or more
    rating columns, as ``experiments.agreement`` reads it): the column ``rater``, by default the first one
    after ``path``. Rows are matched to predictions as agreement matches them
    (:func:`training.evaluation.agreement.match_paths`); an empty rating is no rating; ``unmatched`` counts
    the rated photos with no prediction."""
    path = Path(path)
    header, rows = _csv_rows(path, "a ratings CSV (path and rating columns)", written=False)
    if "path" not in header:
        raise FileFormatError(path, "line 1", f"needs a 'path' column (has {header[:12]})")
    raters = [c for c in header if c != "path"]
    if not raters:
        raise FileFormatError(path, "line 1", "no rating column besides 'path'")
    rater = rater or raters[0]
    if rater not in raters:
        raise FileFormatError(path, "line 1", f"no rating column {rater!r} (has {raters[:12]})")
    at_path, at_rater = header.index("path"), header.index(rater)
    rated = [(cells[at_path], cells[at_rater].strip()) for _, cells in rows if cells[at_rater].strip()]
    matched = match_paths([p for p, _ in rated], list(predicted), path, strict=False)
    ratings: dict[str, str] = {}
    for (_, rating), hit in zip(rated, matched, strict=True):
        if hit is not None:
            ratings[hit] = rating
    return rater, ratings, sum(hit is None for hit in matched)


def _inside(child: Path, folder: Path) -> bool:
    try:
        child.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def find_overlays(explain_dir: str | Path, predicted: Sequence[str]) -> dict[str, Path]:
    """``{predicted path: PNG}``: explain's Grad-CAM overlay of each photo that has one.

    From ``explanations.csv`` when the folder has it (its ``path`` matched to the predictions as ratings
    are, its ``png`` taken only where it names a regular file inside the folder); else by explain's file
    name ``<stem>_explained.png``, for the photos whose stem is unique.
    """
    folder = Path(explain_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"explain folder not found: {folder}")
    found: dict[str, Path] = {}
    table = folder / "explanations.csv"
    if table.exists():
        header, rows = _csv_rows(table, "explain's explanations.csv (path, …, png)")
        if "path" in header and "png" in header:
            at_path, at_png = header.index("path"), header.index("png")
            matched = match_paths([cells[at_path] for _, cells in rows], list(predicted), table, strict=False)
            for (_, cells), hit in zip(rows, matched, strict=True):
                if hit is None:
                    continue
                png = Path(cells[at_png])
                for candidate in (png, folder / png, folder / png.name):
                    if candidate.suffix.lower() == ".png" and _inside(candidate, folder) and _regular(candidate):
                        found[hit] = candidate
                        break
    stems: dict[str, list[str]] = {}
    for p in predicted:
        stems.setdefault(PurePosixPath(p).stem, []).append(p)
    for stem, paths in stems.items():
        candidate = folder / f"{stem}_explained.png"
        if len(paths) == 1 and paths[0] not in found and _regular(candidate) and _inside(candidate, folder):
            found[paths[0]] = candidate
    return found


# ---- order ------------------------------------------------------------------------------------------------------

def disagreements(rows: Sequence[Prediction], ratings: dict[str, str],
                  relabel: dict[str, str] | None = None) -> set[str]:
    """The paths whose rating differs from the predicted class (after ``relabel``, as agreement's
    ``--map`` relabels a grouped model's classes, e.g. ``Probable+Possible`` → ``Probable``)."""
    relabel = relabel or {}
    return {r.path for r in rows if r.path in ratings and ratings[r.path] != relabel.get(r.predicted, r.predicted)}


def review_order(rows: Sequence[Prediction], ratings: dict[str, str] | None = None,
                 disagree: set[str] | None = None) -> list[int]:
    """Indices of ``rows`` in the page's order: with ratings, the disagreements first (``disagree``, by default
    :func:`disagreements`), then the agreements, then the unrated photos; within each, uncertain first (top
    probability ascending, then the margin, then the path)."""
    ratings = ratings or {}
    disagree = disagreements(rows, ratings) if disagree is None else disagree

    def key(i: int) -> tuple:
        r = rows[i]
        group = (0 if r.path in disagree else 1) if r.path in ratings else 2
        return (group if ratings else 0, r.top, r.margin, r.path)

    return sorted(range(len(rows)), key=key)


# ---- thumbnails -------------------------------------------------------------------------------------------------

def thumbnail_name(photo: Path, size: int) -> str | None:
    """The thumbnail's file name: a digest of the photo's path, size, modification time and the thumbnail
    size (a changed photo gets a new one); ``None`` when the photo is not a regular file."""
    try:
        st = photo.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = f"{os.fsencode(photo.resolve())!r}\0{st.st_size}\0{st.st_mtime_ns}\0{size}"
    return hashlib.sha256(key.encode()).hexdigest()[:20] + ".jpg"


def make_thumbnail(photo: Path, dest: Path, size: int = THUMB_SIZE) -> None:
    """A JPEG of ``photo`` at most ``size`` pixels on its longer side, EXIF orientation applied, written
    atomically to ``dest``; raises ``ValueError`` naming the photo when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from training.data.decoding import to_rgb_or_l

    try:
        with Image.open(photo) as im:
            if im.format in ("JPEG", "MPO"):
                im.draft("RGB", (2 * size, 2 * size))  # DCT-domain downscaling: 1/2, 1/4 or 1/8
            im = ImageOps.exif_transpose(im)
            im = to_rgb_or_l(im, rgb=True)
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            im.save(buffer, "JPEG", quality=82, optimize=True)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"refused by Pillow's decompression-bomb limit ({exc})") from None
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file can make a decoder raise anything: the file's fault
        raise ValueError(f"corrupt or unreadable ({type(exc).__name__}: {exc})") from None
    with atomic_open(dest, "wb") as f:
        f.write(buffer.getvalue())


# ---- the page ---------------------------------------------------------------------------------------------------

def _text(s: str) -> str:
    """``s`` for HTML text or a quoted attribute: escaped; bytes that were not UTF-8 shown as U+FFFD."""
    return html.escape(s.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), quote=True)


def _href(target: Path, base: Path) -> str:
    """The relative, percent-encoded URL of ``target`` from the folder ``base`` (both made absolute)."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(base))
    return html.escape(quote(os.fsencode(PurePosixPath(Path(rel).as_posix())), safe="/"), quote=True)


_CSS = """
*{box-sizing:border-box}body{font:14px/1.35 system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.5em 1em;z-index:1}
h1{font-size:1.2em;margin:.2em 0}header p{margin:.2em 0;color:#555}form{display:flex;gap:1em;flex-wrap:wrap}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px;padding:8px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px}figure[hidden]{display:none}
figure.d{border:2px solid #c00}figure img{display:block;width:100%;height:192px;object-fit:contain;background:#eee}
.n{display:flex;align-items:center;justify-content:center;height:192px;background:#eee;color:#777}
figcaption{font-size:12px;overflow-wrap:anywhere}.t{font-weight:600;font-size:14px}
.r{background:#f0a000;color:#000;border-radius:3px;padding:0 4px;font-size:11px}.q{color:#c00}.a{color:#080}
ol{margin:.2em 0;padding-left:1.4em}li.m{list-style:none;color:#777}.c{display:inline-block;margin-top:2px}
figure img.g{height:auto}
"""

_JS = """
(function(){var g=document.getElementById('g'),cards=g.children,k=document.getElementById('k'),
r=document.getElementById('rf'),d=document.getElementById('ds'),x=document.getElementById('cm'),
n=document.getElementById('n');var h=new URLSearchParams(location.hash.slice(1));
if(h.has('class'))k.value=h.get('class');if(r&&h.get('referred')==='1')r.checked=true;
if(d&&h.get('disagreements')==='1')d.checked=true;if(x&&h.get('gradcam')==='1')x.checked=true;
function cam(f,on){var a=f.querySelector('a.c'),o=f.querySelector('a.o');if(!a||!!o===on)return;
if(o){o.remove();return;}o=document.createElement('a');o.className='o';o.href=a.getAttribute('href');
o.target='_blank';var i=document.createElement('img');i.className='g';i.loading='lazy';i.alt='Grad-CAM';
i.src=a.getAttribute('href');o.appendChild(i);f.insertBefore(o,f.querySelector('figcaption'));}
function apply(){var m=0;for(var i=0;i<cards.length;i++){var c=cards[i],s=(!k.value||c.dataset.p===k.value)
&&(!r||!r.checked||c.dataset.r==='1')&&(!d||!d.checked||c.className==='d');c.hidden=!s;if(s){m++;
if(x&&x.checked)cam(c,true);}}n.textContent=m+' of '+cards.length+' shown';var q=new URLSearchParams();
if(k.value)q.set('class',k.value);if(r&&r.checked)q.set('referred','1');
if(d&&d.checked)q.set('disagreements','1');if(x&&x.checked)q.set('gradcam','1');
try{history.replaceState(null,'',q.toString()?'#'+q.toString():location.pathname);}catch(e){}}
k.addEventListener('change',apply);[r,d].forEach(function(e){if(e)e.addEventListener('change',apply);});
if(x)x.addEventListener('change',function(){if(!x.checked)for(var i=0;i<cards.length;i++)cam(cards[i],false);
apply();});g.addEventListener('click',function(e){var a=e.target.closest('a.c');if(!a)return;
e.preventDefault();var f=a.closest('figure');cam(f,!f.querySelector('a.o'));});apply();})();
"""


def render_page(preds: Predictions, order: Sequence[int], base: Path, *, images_root: Path,
                thumbs: dict[str, Path], overlays: dict[str, Path], ratings: dict[str, str] | None,
                disagree: set[str] | None, rater: str | None, title: str) -> str:
    """The HTML of the page (see the module's docstring). ``base`` is the folder the page is written to:
    every link is relative to it."""
    ratings = ratings or {}
    disagree = disagreements(preds.rows, ratings) if disagree is None else disagree
    counts = {c: 0 for c in preds.class_names}
    for r in preds.rows:
        counts[r.predicted] += 1
    referred = sum(bool(r.refer) for r in preds.rows)
    sort_line = ("disagreements with " + _text(rater or "the ratings") + " first, then agreements, then unrated; "
                 if ratings else "") + "uncertain first (lowest top probability, then smallest margin)"
    out = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_text(title)}</title>'
           f"<style>{_CSS}</style></head><body><header><h1>{_text(title)}</h1>"
           f"<p>{len(preds.rows)} photos from {_text(str(preds.source))}; sorted {sort_line}."
           + (f" {referred} referred to a person." if preds.has_refer else "")
           + (f" {len(ratings)} rated, {len(disagree)} disagreements." if ratings else "")
           + '</p><form><label>predicted class <select id="k"><option value="">all</option>']
    for c in preds.class_names:
        out.append(f'<option value="{_text(c)}">{_text(c)} ({counts[c]})</option>')
    out.append("</select></label>")
    if preds.has_refer:
        out.append('<label><input type="checkbox" id="rf"> referred only</label>')
    if ratings:
        out.append('<label><input type="checkbox" id="ds"> disagreements only</label>')
    if overlays:
        out.append('<label><input type="checkbox" id="cm"> Grad-CAM on every card</label>')
    out.append('<span id="n"></span></form></header><main id="g">\n')
    names = [_text(c) for c in preds.class_names]
    for i in order:
        r = preds.rows[i]
        shown = _text(r.path)
        rating = ratings.get(r.path)
        disagrees = r.path in disagree
        attrs = f' data-p="{_text(r.predicted)}"' + (' data-r="1"' if r.refer else "") + (' class="d"' if disagrees
                                                                                              else "")
        photo = images_root / r.path
        thumb = thumbs.get(r.path)
        img = (f'<img loading="lazy" src="{_href(thumb, base)}" alt="{shown}">' if thumb is not None
               else '<div class="n">no thumbnail</div>')
        link = (f'<a href="{_href(photo, base)}">{img}</a>' if _regular(photo) else img)
        ranked = sorted(range(len(r.probs)), key=lambda k: -r.probs[k])
        probs = "".join(f"<li>{names[k]} {r.probs[k]:.3f}</li>" for k in ranked[:3])
        if len(ranked) > 3:  # the rest on hover, so that 15 classes keep a card (and the page) small
            probs += (f'<li class="m" title="{"; ".join(f"{names[k]} {r.probs[k]:.3f}" for k in ranked[3:])}">'
                      f"{len(ranked) - 3} more</li>")
        note = ""
        if rating is not None:
            note = (f' <span class="q">rated {_text(rating)}</span>' if disagrees
                    else ' <span class="a">rating agrees</span>')
        cam = overlays.get(r.path)
        out.append(f"<figure{attrs}>{link}<figcaption><span class=\"t\">{_text(r.predicted)}</span> "
                   f"{r.top:.3f}" + (' <span class="r">refer</span>' if r.refer else "") + note
                   + f"<br>{shown}<ol>{probs}</ol>"
                   + (f'<a class="c" href="{_href(cam, base)}">Grad-CAM</a>' if cam is not None else "")
                   + "</figcaption></figure>\n")
    out.append(f"</main><script>{_JS}</script></body></html>\n")
    return "".join(out)


def _check_folder(path: Path, what: str) -> None:
    if path.is_symlink():
        raise FileExistsError(f"{path}: is a symlink; the {what} must be a real folder (choose another --out)")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder ({what})")


def write_review(predictions: str | Path, images: str | Path, out: str | Path, *, explain: str | Path | None = None,
                 ratings: str | Path | None = None, rater: str | None = None,
                 relabel: dict[str, str] | None = None, overwrite: bool = False, thumb_size: int = THUMB_SIZE,
                 workers: int | None = None, title: str | None = None) -> ReviewSummary:
    """Write ``out/index.html`` and ``out/thumbs/`` for predict's CSV ``predictions`` over the photos in
    ``images`` (see the module's docstring); ``explain``: explain's output folder; ``ratings``: a person's
    ratings, disagreements first (``rater``: its column; ``relabel``: the model's classes mapped onto the
    ratings' for the comparison). An existing page is replaced only with ``overwrite``; thumbnails of
    unchanged photos are reused, those of photos no longer on the page removed."""
    images_root, out = Path(images), Path(out)
    if not images_root.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_root}")
    _check_folder(out, "output folder")
    page = out / PAGE
    if (page.exists() or page.is_symlink()) and not overwrite:
        raise FileExistsError(f"{page} exists: pass --overwrite to replace it (or choose another --out)")
    preds = read_predictions(predictions)
    paths = [r.path for r in preds.rows]
    rater_name, rated, unmatched = read_ratings(ratings, paths, rater=rater) if ratings else (None, {}, 0)
    disagree = disagreements(preds.rows, rated, relabel)
    overlays = find_overlays(explain, paths) if explain is not None else {}
    output_dir(out)
    thumbs_dir = out / THUMBS
    _check_folder(thumbs_dir, "thumbnail folder")
    output_dir(thumbs_dir)
    summary = ReviewSummary(page=page, photos=len(preds.rows), unmatched_ratings=unmatched, overlays=len(overlays),
                            referred=sum(bool(r.refer) for r in preds.rows) if preds.has_refer else None,
                            rated=len(rated), disagreements=len(disagree))

    def thumb(r: Prediction) -> tuple[str, Path | None, str, bool]:
        photo = images_root / r.path
        name = thumbnail_name(photo, thumb_size)
        if name is None:
            return r.path, None, "photo not found (or not a regular file)", False
        dest = thumbs_dir / name
        if dest.is_symlink():
            return r.path, None, "thumbnail is a symlink (left alone)", False
        if _regular(dest):
            return r.path, dest, "", True
        try:
            make_thumbnail(photo, dest, thumb_size)
        except ValueError as exc:
            return r.path, None, str(exc), False
        return r.path, dest, "", False

    thumbs: dict[str, Path] = {}
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
        for path, dest, why, reused in pool.map(thumb, preds.rows):
            if dest is None:
                summary.missing.append((path, why))
            else:
                thumbs[path] = dest
                summary.thumbnails_reused += reused
                summary.thumbnails_made += not reused
    text = render_page(preds, review_order(preds.rows, rated, disagree), out, images_root=images_root,
                       thumbs=thumbs, overlays=overlays, ratings=rated, disagree=disagree, rater=rater_name,
                       title=title or f"Review of {Path(predictions).name}")
    data = text.encode("utf-8")
    with atomic_open(page, "wb") as f:
        f.write(data)
    summary.html_bytes = len(data)
    keep = {p.name for p in thumbs.values()}
    for entry in os.scandir(thumbs_dir):  # stale thumbnails this module wrote: by name, never through a link
        if _THUMB_NAME.match(entry.name) and entry.name not in keep and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    return summary
