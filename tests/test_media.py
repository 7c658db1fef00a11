"""ingest/media.py on real files written to tmp dirs: broken files refused with a clear message, every image mode
decoded to upright RGB, perceptual hashes, alt text, text documents and OCR."""

from __future__ import annotations

import hashlib
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import pytesseract
from PIL import Image, ImageDraw, ImageFile, ImageFont
from PIL.PngImagePlugin import PngInfo
from skimage import data as photos

from ingest.media import MediaError, load_image, load_text, media_kind, ocr_image, sha256_file

MAX_PIXELS, MAX_BYTES = 100_000_000, 200 * 2**20  # the Settings defaults
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def load(path: Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES):
    return load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)


def pixel(info, x: int, y: int) -> tuple[int, int, int]:
    return info.image.getpixel((x, y))


def close(a, b, tol: int = 12) -> bool:
    return all(abs(int(u) - int(v)) <= tol for u, v in zip(a, b))


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A few-hundred-byte PNG whose header declares width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


# -- files that must be refused ----------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(MediaError, match=r"^empty\.jpg: the file is empty \(0 bytes\)$"):
        load(tmp_path / "empty.jpg")


def test_text_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(MediaError, match=r"^notes\.jpg: not an image Pillow can read"):
        load(tmp_path / "notes.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"^gone\.png: cannot read the file \(No such file or directory\)"):
        load(tmp_path / "gone.png")


@pytest.mark.parametrize("fmt, name", [("PNG", "truncated.png"), ("JPEG", "truncated.jpg")])
def test_truncated_image_fails_at_load(tmp_path, fmt, name):
    whole = tmp_path / f"whole.{fmt.lower()}"
    Image.fromarray(photos.astronaut()).save(whole, fmt)
    raw = whole.read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MediaError, match=rf"^{name}: the image data is truncated or corrupt; re-export the file"):
        load(tmp_path / name)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    Image.fromarray(photos.coffee()).save(tmp_path / "whole.png")
    raw = bytearray((tmp_path / "whole.png").read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64  # garbage in the middle of the image data
    (tmp_path / "scribbled.png").write_bytes(bytes(raw))
    with pytest.raises(MediaError, match=r"^scribbled\.png: the image data is truncated or corrupt"):
        load(tmp_path / "scribbled.png")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    png_declaring(tmp_path / "bomb.png", 30_000, 30_000)  # 900 Mpx: over Pillow's own hard limit too
    with pytest.raises(MediaError, match=r"^bomb\.png: the image is too large to decode safely"):
        load(tmp_path / "bomb.png")
    png_declaring(tmp_path / "huge.png", 10_000, 9_500)  # 95 Mpx: Pillow only warns; our limit decides
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes
        with pytest.raises(MediaError, match=r"^huge\.png: 10000x9500 = 95 Mpx exceeds the 50 Mpx limit "
                                             r"\(OMNIBRIDGE_MAX_IMAGE_PIXELS\)$"):
            load(tmp_path / "huge.png", max_pixels=50_000_000)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # the global is left alone


def test_well_compressed_large_image_over_max_pixels(tmp_path):
    Image.new("RGB", (4000, 3000), "white").save(tmp_path / "plain.png")  # 12 Mpx in a few KB
    assert (tmp_path / "plain.png").stat().st_size < 100_000
    with pytest.raises(MediaError, match=r"^plain\.png: 4000x3000 = 12 Mpx exceeds the 1 Mpx limit"):
        load(tmp_path / "plain.png", max_pixels=1_000_000)
    assert load(tmp_path / "plain.png", max_pixels=12_000_000).width == 4000  # at the limit is fine


def test_file_over_max_bytes(tmp_path):
    Image.fromarray(photos.astronaut()).save(tmp_path / "big.png")
    with pytest.raises(MediaError, match=r"^big\.png: the file is [\d.]+ KB, over the 100 KB limit "
                                         r"\(OMNIBRIDGE_MAX_FILE_MB\)$"):
        load(tmp_path / "big.png", max_bytes=100 * 1024)


# -- decoding to upright RGB -------------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    im.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    info = load(tmp_path / "phone.jpg")
    assert (info.width, info.height) == info.image.size == (20, 40)
    assert close(pixel(info, 10, 8), RED) and close(pixel(info, 10, 32), BLUE)  # left became top
    assert info.format == "JPEG" and info.image.mode == "RGB"


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "print.jpg", quality=95)  # red ink
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    info = load(tmp_path / "print.jpg")
    assert info.image.mode == "RGB" and close(pixel(info, 16, 16), RED)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_greyscale_is_scaled_not_clipped(tmp_path, ext):
    levels = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(8, axis=0).repeat(8, axis=1)  # (8, 24)
    Image.fromarray(levels).save(tmp_path / f"scan.{ext}")
    assert Image.open(tmp_path / f"scan.{ext}").mode.startswith("I")
    info = load(tmp_path / f"scan.{ext}")
    assert [pixel(info, x, 4) for x in (4, 12, 20)] == [(0, 0, 0), (128, 128, 128), WHITE]


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (20, 10), (0, 0, 0, 0))  # transparent black
    im.paste((255, 0, 0, 255), (10, 0, 20, 10))
    im.save(tmp_path / "logo.png")
    info = load(tmp_path / "logo.png")
    assert pixel(info, 5, 5) == WHITE and pixel(info, 15, 5) == RED


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_with_transparency(tmp_path, ext):
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    im.paste(1, (10, 0, 20, 10))
    im.save(tmp_path / f"icon.{ext}", transparency=0)
    info = load(tmp_path / f"icon.{ext}")
    assert pixel(info, 5, 5) == WHITE and pixel(info, 15, 5) == RED


@pytest.mark.parametrize("ext, fmt", [("gif", "GIF"), ("webp", "WEBP"), ("png", "PNG")])  # png: APNG
def test_animation_gives_its_first_frame(tmp_path, ext, fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / f"anim.{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    assert Image.open(path).n_frames == 3
    info = load(path)
    assert info.format == fmt and info.image.size == (16, 16) and close(pixel(info, 8, 8), RED)


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_1bit_image(tmp_path, ext):
    im = Image.new("1", (16, 8), 0)
    im.paste(1, (8, 0, 16, 8))
    im.save(tmp_path / f"fax.{ext}")
    info = load(tmp_path / f"fax.{ext}")
    assert pixel(info, 4, 4) == (0, 0, 0) and pixel(info, 12, 4) == WHITE


def test_content_format_wins_over_extension(tmp_path):
    Image.new("RGB", (8, 8), GREEN).save(tmp_path / "really-a-png.jpg", "PNG")
    assert load(tmp_path / "really-a-png.jpg").format == "PNG"


# -- perceptual hash and alt text --------------------------------------------------------------------------------

def test_phash_same_close_and_far(tmp_path):
    Image.fromarray(photos.astronaut()).save(tmp_path / "astronaut.png")
    Image.open(tmp_path / "astronaut.png").resize((200, 200)).save(tmp_path / "small.jpg", quality=85)
    Image.fromarray(photos.coffee()).save(tmp_path / "coffee.png")
    a, again = load(tmp_path / "astronaut.png").phash, load(tmp_path / "astronaut.png").phash
    assert len(a) == 16 and int(a, 16) >= 0
    assert a == again
    assert hamming(a, load(tmp_path / "small.jpg").phash) <= 6  # the pipeline's near-duplicate threshold
    assert hamming(a, load(tmp_path / "coffee.png").phash) > 16


def test_alt_text_from_metadata(tmp_path):
    meta = PngInfo()
    meta.add_text("Description", "A red bicycle against a wall")
    Image.new("RGB", (8, 8), RED).save(tmp_path / "bike.png", pnginfo=meta)
    assert load(tmp_path / "bike.png").alt == "A red bicycle against a wall"

    exif = Image.Exif()
    exif[0x010E] = "Harbour at dawn"  # ImageDescription
    Image.new("RGB", (8, 8), BLUE).save(tmp_path / "harbour.jpg", exif=exif)
    assert load(tmp_path / "harbour.jpg").alt == "Harbour at dawn"

    Image.new("RGB", (8, 8), GREEN).save(tmp_path / "field.jpg", comment="Green field")
    assert load(tmp_path / "field.jpg").alt == "Green field"

    Image.new("RGB", (8, 8), GREEN).save(tmp_path / "plain.png")
    assert load(tmp_path / "plain.png").alt is None


# -- text documents ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, text", [
    ("\ufeffCafé crème, 12 mugs\n".encode("utf-8"), "Café crème, 12 mugs\n"),  # UTF-8 with BOM
    ("Café crème".encode("utf-8"), "Café crème"),
    ("Café crème".encode("latin-1"), "Café crème"),  # not UTF-8: Latin-1
    ("\ufeffCafé crème".encode("utf-16-le"), "Café crème"),  # Notepad's "Unicode"
])
def test_text_documents_decode(tmp_path, raw, text):
    (tmp_path / "doc.txt").write_bytes(raw)
    assert load_text(tmp_path / "doc.txt", max_bytes=MAX_BYTES) == text


@pytest.mark.parametrize("raw, why", [
    (b"", r"the file is empty \(0 bytes\)"),
    (b"  \n\t\r\n", r"the document contains only whitespace"),
    (b"PK\x03\x04\x00\x00binary", r"a binary file, not text \(it contains NUL bytes\)"),
    (b"x" * 2000, r"the file is 2 KB, over the 1 KB limit \(OMNIBRIDGE_MAX_FILE_MB\)"),
])
def test_bad_text_documents(tmp_path, raw, why):
    (tmp_path / "notes.md").write_bytes(raw)
    with pytest.raises(MediaError, match=rf"^notes\.md: {why}"):
        load_text(tmp_path / "notes.md", max_bytes=1024)


# -- the rest ----------------------------------------------------------------------------------------------------

def test_media_kind():
    assert [media_kind(p) for p in ("a.JPG", "b.jpeg", "c.png", "d.gif", "e.webp", "f.bmp", "g.tif", "h.TIFF")] == \
        ["image"] * 8
    assert media_kind("notes.txt") == media_kind("README.md") == "text"
    assert media_kind("data.csv") is media_kind("archive") is media_kind("pairs.jsonl") is None


def test_sha256_file(tmp_path):
    blob = np.random.default_rng(0).bytes(3 * 2**20 + 17)  # several chunks
    (tmp_path / "blob.bin").write_bytes(blob)
    assert sha256_file(tmp_path / "blob.bin") == hashlib.sha256(blob).hexdigest()


def invoice() -> Image.Image:
    im = Image.new("RGB", (900, 160), WHITE)
    ImageDraw.Draw(im).text((30, 30), "INVOICE 2041", fill=(0, 0, 0), font=ImageFont.load_default(size=72))
    return im


def test_ocr_reads_rendered_text():
    if shutil.which("tesseract"):
        assert "INVOICE 2041" in ocr_image(invoice())
        assert ocr_image(Image.new("RGB", (200, 100), WHITE)) == ""
    else:  # this machine has no tesseract: the error must say how to get it
        with pytest.raises(MediaError, match="install Debian's tesseract-ocr"):
            ocr_image(invoice())


def test_ocr_without_tesseract_says_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    with pytest.raises(MediaError, match=r"^OCR needs tesseract, which is not installed: install Debian's tesseract"):
        ocr_image(invoice())
