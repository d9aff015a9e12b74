"""Decoding one photo into an array: formats, integrity checks and the lab's preprocessing.

Any format Pillow opens is read whatever the extension says; HEIC/HEIF through the optional
``pillow-heif`` (``pip install '.[heic]'``). EXIF orientation is applied, transparency is composited on
white, 16-bit images are scaled to 8 bits, CMYK is converted to RGB.

Preprocessing (the lab's): square crop ``center`` (the largest centred square) or ``squash`` (the whole
image), bicubic resize to ``image_size``, grayscale (ITU-R 601 luma, Pillow's ``L``) or RGB, float32 in
[0, 1]. Large JPEGs are decoded with Pillow's draft mode (DCT scaling by 1/2, 1/4 or 1/8) to no less than
twice the target size before the bicubic resize.

Integrity: a zero-byte, truncated, corrupt or unreadable file, or one that is not a regular file, raises
:class:`BadImageError` naming it. Pillow's decompression-bomb limit stays on."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CACHE_VERSION = "v1"  # part of every cache key (Preprocess.cache_key): bump it when decoding changes its output


class BadImageError(ValueError):
    """An image file that cannot be used; the message names the file."""


CROPS = ("center", "squash")  # the largest centred square, or the whole photo resized


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes an array: ``(image_size, image_size, 1 or 3)`` float32 in [0, 1]."""

    image_size: int = 108
    crop: str = "center"
    rgb: bool = False

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; expected 'center' or 'squash'")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")

    @property
    def channels(self) -> int:
        return 3 if self.rgb else 1

    def cache_key(self) -> str:
        return f"{CACHE_VERSION}-{self.image_size}-{self.crop}-{'rgb' if self.rgb else 'gray'}"


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()


HEIF_SUFFIXES = {".heic", ".heif", ".hif"}


def to_rgb_or_l(im: Image.Image, rgb: bool) -> Image.Image:
    """Any Pillow mode → ``RGB`` or ``L``; transparency composited on white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB" if rgb else "L")


def load_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    """Read and preprocess one photo; ``BadImageError`` naming the file if it cannot be used."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):  # checked before opening: a FIFO would block, a device never end
        raise BadImageError(f"{path}: not a regular file (a folder, FIFO or device)")
    if st.st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in HEIF_SUFFIXES and not HEIF_AVAILABLE:
        raise BadImageError(
            f"{path}: HEIC/HEIF needs the optional pillow-heif package: pip install -e '.[heic]'"
        )
    try:
        with Image.open(path) as im:
            if im.format in ("JPEG", "MPO"):
                # DCT-domain downscaling; keeps at least 2× the target on the short side
                im.draft("RGB" if pre.rgb else "L", (2 * pre.image_size, 2 * pre.image_size))
            im = ImageOps.exif_transpose(im)
            im = to_rgb_or_l(im, pre.rgb)
            w, h = im.size
            if pre.crop == "center":
                side = min(w, h)
                left, top = (w - side) / 2, (h - side) / 2
                box = (left, top, left + side, top + side)
            else:
                box = (0, 0, w, h)
            im = im.resize((pre.image_size, pre.image_size), Image.Resampling.BICUBIC, box=box)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"{path}: refused by Pillow's decompression-bomb limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadImageError(f"{path}: not an image Pillow can read ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise BadImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - a hostile file can make a decoder raise anything: it is the file's fault
        raise BadImageError(f"{path}: corrupt image, the decoder failed ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr
