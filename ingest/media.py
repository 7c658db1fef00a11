"""Media files in, checked and decoded: images as upright RGB ready for a model, documents as text.

Every bad file raises `MediaError` with a message that names the file and says what is wrong in plain words
("empty.jpg: the file is empty (0 bytes)"); the pipeline records it on the asset and moves on.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pytesseract
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"})
TEXT_EXTENSIONS = frozenset({"txt", "md"})
PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # Image.open tries only these (no EPS, PSD, ...)
PNG_ALT_KEYS = ("Description", "Title", "Comment")  # PNG text chunks that describe the image
EXIF_IMAGE_DESCRIPTION, EXIF_XP_COMMENT = 0x010E, 0x9C9C


class MediaError(ValueError):
    """A file cannot be ingested; the message names the file and says what is wrong."""


@dataclass(frozen=True)
class ImageInfo:
    image: Image.Image  # RGB, EXIF orientation applied, first frame of an animation
    width: int  # of `image`, i.e. after EXIF orientation
    height: int
    format: str  # the content's format as Pillow reads it: "JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"
    phash: str  # 64-bit perceptual hash as 16 hex digits
    colour: str  # mean RGB of each quarter (2x2), 12 bytes as 24 hex digits: phash is blind to colour
    alt: str | None  # description from the file's metadata, if any


def media_kind(path: str | Path) -> str | None:
    """'image' or 'text' by file extension; None for files we do not ingest."""
    ext = Path(path).suffix.lower().lstrip(".")
    return "image" if ext in IMAGE_EXTENSIONS else "text" if ext in TEXT_EXTENSIONS else None


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads in chunks


def load_image(uri: str | Path, max_pixels: int, max_bytes: int) -> ImageInfo:
    """Check, fully decode and normalise an image file; raise MediaError for anything we cannot index."""
    path = Path(uri)
    name = path.name
    _check_file_size(path, max_bytes)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own default limit; `max_pixels` (checked below, from the header) decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=PILLOW_FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise MediaError(f"{name}: {w}x{h} = {_mpx(w * h)} exceeds the {_mpx(max_pixels)} limit "
                                     "(OMNIBRIDGE_MAX_IMAGE_PIXELS)")
                im.load()  # full decode of the first frame: truncated data fails here, not in the model
                fmt = "JPEG" if im.format == "MPO" else im.format  # MPO: a camera JPEG with extra previews
                alt = _alt_text(im)  # after load(): PNG text chunks may follow the image data
                rgb = _to_rgb(ImageOps.exif_transpose(im))
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(f"{name}: the image is too large to decode safely, a possible decompression bomb ({e})") \
            from None
    except UnidentifiedImageError:
        raise MediaError(f"{name}: not an image Pillow can read (the content is not JPEG, PNG, GIF, WebP, BMP or "
                         "TIFF); check the file opens in an image viewer") from None
    except Exception as e:  # Pillow's decoders report bad data as OSError, SyntaxError, ValueError, EOFError, ...
        raise MediaError(f"{name}: the image data is truncated or corrupt; re-export the file "
                         f"({type(e).__name__}: {e})") from None
    return ImageInfo(rgb, rgb.width, rgb.height, fmt, str(imagehash.phash(rgb)), colour_signature(rgb), alt)


def colour_signature(rgb: Image.Image) -> str:
    """The mean colour of each quarter of the image, as 24 hex digits (2x2 cells x RGB, one byte each)."""
    return rgb.resize((2, 2), Image.Resampling.BOX).tobytes().hex()


def colour_distance(a: str, b: str) -> float:
    """Mean absolute difference of two colour signatures, in 0..255 per channel."""
    return float(np.abs(np.frombuffer(bytes.fromhex(a), np.uint8).astype(np.int16)
                        - np.frombuffer(bytes.fromhex(b), np.uint8).astype(np.int16)).mean())


def load_text(uri: str | Path, max_bytes: int) -> str:
    """The text of a .txt/.md document: UTF-8 (BOM dropped), UTF-16 with a BOM, else Latin-1."""
    path = Path(uri)
    _check_file_size(path, max_bytes)
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")
    elif b"\x00" in data:
        raise MediaError(f"{path.name}: a binary file, not text (it contains NUL bytes); save it as plain text")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # every byte sequence decodes; old Western-European files
    if not text.strip():
        raise MediaError(f"{path.name}: the document contains only whitespace, nothing to index")
    return text


def ocr_image(image: Image.Image) -> str:
    """Text recognised in an image by tesseract (English), stripped; may be empty."""
    try:
        return pytesseract.image_to_string(image, lang="eng").strip()
    except pytesseract.TesseractNotFoundError:
        raise MediaError("OCR needs tesseract, which is not installed: install Debian's tesseract-ocr "
                         "(apt-get install tesseract-ocr tesseract-ocr-eng) or ingest without --ocr") from None
    except pytesseract.TesseractError as e:
        raise MediaError(f"OCR failed: {e.message.strip()}; for English OCR install Debian's tesseract-ocr-eng") \
            from None


# -- helpers ---------------------------------------------------------------------------------------------------

def _check_file_size(path: Path, max_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MediaError(f"{path.name}: cannot read the file ({e.strerror})") from None
    if size == 0:
        raise MediaError(f"{path.name}: the file is empty (0 bytes)")
    if size > max_bytes:
        raise MediaError(f"{path.name}: the file is {_mb(size)}, over the {_mb(max_bytes)} limit "
                         "(OMNIBRIDGE_MAX_FILE_MB)")


def upload_name(filename: str | None, max_stem: int = 120) -> str:
    """A safe file name for an uploaded image: refused (MediaError) if it is empty, names a folder, climbs out of
    one or is not an image name; else other characters become '_' and the extension lower case."""
    raw = filename or ""
    if not raw.strip():
        raise MediaError("file: the upload has no file name; send it as multipart form data with a filename")
    if any(c in raw for c in ("/", "\\", "\x00")) or raw.strip(".") == "":
        raise MediaError(f"file {raw!r}: the name must be a plain file name, without folders or '..'")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).lstrip("._-")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or media_kind(name) != "image":
        raise MediaError(f"file {raw!r}: not an image file name; upload one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return f"{stem[:max_stem]}.{ext.lower()}"


def thumbnail_jpeg(uri: str | Path, size: int, max_pixels: int, quality: int = 85) -> bytes:
    """A JPEG of the image, at most size x size, upright and over white like `load_image`; JPEGs decode at a
    reduced scale (fast for big photos), and no hash is computed. Larger images than max_pixels are refused."""
    try:
        with Image.open(uri) as im:
            if im.width * im.height > max_pixels:
                raise MediaError(f"{uri}: {im.width}x{im.height} pixels is over the limit of {max_pixels} "
                                 "(OMNIBRIDGE_MAX_IMAGE_PIXELS)")
            im.draft("RGB", (size, size))
            rgb = _to_rgb(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as e:
        raise MediaError(f"{uri}: not a readable image ({e})") from None
    rgb.thumbnail((size, size))
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for any mode: transparency over white, 16/32-bit greyscale scaled (not clipped), CMYK, palette, 1-bit."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)  # (h, w), 16-bit values 0..65535 ("I" as decoded from 16-bit files)
        return Image.fromarray(np.clip(np.rint(a / 257), 0, 255).astype(np.uint8)).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")  # CMYK (Adobe's inverted CMYK is undone when decoding), L, P, 1, YCbCr, ...


def _alt_text(im: Image.Image) -> str | None:
    """Description from PNG text chunks, EXIF ImageDescription / XPComment or a JPEG/GIF comment."""
    exif = im.getexif()
    xp = exif.get(EXIF_XP_COMMENT)
    candidates = [im.info.get(k) for k in PNG_ALT_KEYS] + [
        exif.get(EXIF_IMAGE_DESCRIPTION),
        bytes(xp).decode("utf-16-le", errors="replace") if isinstance(xp, (bytes, tuple)) else xp,
        im.info.get("comment"),
    ]
    for value in candidates:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str) and value.strip("\x00 \t\r\n"):
            return value.strip("\x00 \t\r\n")
    return None


def _mb(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.1f} KB".replace(".0 ", " ") if n >= 2**10 else f"{n} bytes"
    return f"{n / 2**20:,.1f} MB".replace(".0 ", " ")


def _mpx(n: int) -> str:
    return f"{n / 1e6:,.1f} Mpx".replace(".0 ", " ") if n >= 10**6 else f"{n / 1e6:.2g} Mpx"
