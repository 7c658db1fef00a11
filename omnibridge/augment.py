"""Image views for alignment: the backbone is frozen, so each image's features are cached for a few views.

Views are drawn from a seeded `random.Random`, so a run is reproducible. Only Pillow is used.
"""

from __future__ import annotations

import random

from PIL import Image, ImageOps

from .backbones.base import to_rgb


def _crop(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    s = rng.uniform(0.6, 0.95)
    cw, ch = max(1, int(w * s)), max(1, int(h * s))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def _zoom_out(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    s = rng.uniform(0.55, 0.9)
    small = im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    canvas.paste(small, (rng.randint(0, w - small.width), rng.randint(0, h - small.height)))
    return canvas


def _rotate(im: Image.Image, rng: random.Random) -> Image.Image:
    return im.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))


def _grey(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def _low_res(im: Image.Image, rng: random.Random) -> Image.Image:
    side = rng.randint(16, 40)
    return im.resize((side, side), Image.Resampling.BILINEAR).resize(im.size, Image.Resampling.BILINEAR)


# No mirror: it would turn a "b" into a "d" and a 2 into something else.
OPS = (_crop, _zoom_out, _rotate, _grey, _low_res)


def random_view(image: Image.Image, rng: random.Random) -> Image.Image:
    """One to two random transformations of an RGB copy of `image`."""
    im = to_rgb(image)
    for op in rng.sample(OPS, rng.randint(1, 2)):
        im = op(im, rng)
    return im
