"""A small real captioned-image set from the photos bundled with scikit-image.

Each image is one of ``skimage.data``'s loaders; its caption is the one-line summary of that
loader's docstring (e.g. "Coffee cup."), and its id is the loader name. The images ship inside
the scikit-image wheel (BSD-3-Clause), each CC0 or public domain as its docstring's Notes say,
so nothing is downloaded. Output is the PAIRS.jsonl format: ``{"image", "caption", "id"}`` per
line, the image path relative to the jsonl file.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Loaders that work without pooch or a network and whose summary describes the picture.
# Left out: cat (same image as chelsea), checkerboard and shepp_logan_phantom (synthetic),
# lfw_subset (200 25x25 crops, one summary for all), stereo_motorcycle (the summary describes a
# stereo pair with disparities, not the picture), and brain, cells3d, eagle, human_mitosis,
# kidney, lily, nickel_solidification, palisades_of_vogt, protein_transport, skin, vortex
# (these need a download).
PHOTO_LOADERS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
    "logo", "microaneurysms", "moon", "page", "retina", "rocket", "text",
)


def photo_sample_dir(data_home: Path) -> Path:
    """Default folder of the photo sample under ``data_home``."""
    return Path(data_home) / "skimage-photos"


def _summary(func) -> str:
    """The docstring's one-line summary: its first paragraph on one line."""
    doc = inspect.getdoc(func) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _to_pil(array: np.ndarray) -> Image.Image:
    """uint8/bool/float image array -> PIL image (RGBA composited over white)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, "white")
        background.paste(image, mask=image.getchannel("A"))
        image = background
    return image


def write_photo_sample(dest: Path) -> Path:
    """Write scikit-image's bundled photos to ``dest/images/*.png`` and ``dest/pairs.jsonl``.

    Idempotent: PNGs already present are reused. Returns the path of ``pairs.jsonl``.
    """
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("write_photo_sample needs scikit-image: pip install scikit-image") from err

    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in PHOTO_LOADERS:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            log.warning("skimage.data.%s is missing in this scikit-image version; skipped", name)
            continue
        path = dest / "images" / f"{name}.png"
        if not path.exists():
            try:
                array = loader()
            except Exception as err:  # e.g. a loader that now needs pooch and a download
                log.warning("skimage.data.%s could not load offline (%s); skipped", name, err)
                continue
            _to_pil(array).save(path)
        rows.append({"image": f"images/{name}.png", "caption": _summary(loader), "id": name})

    pairs = dest / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log.info("wrote %d photo pairs to %s", len(rows), pairs)
    return pairs
