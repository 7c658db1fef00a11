"""Visual facts measured from an image's pixels, for the answerer: dominant colours, brightness, colourfulness.

No model: plain pixel statistics that a person can check by eye. The image is read at most 128 px on a side;
transparent pixels (an emoji's background) are left out, so "the colour of the apple emoji" is the apple's.

    facts = measure("photo.png")   # VisualFacts(colours=["blue", "white"], brightness=0.54, colourfulness=0.31)

Colour names come from HSV bins: black (value < 0.2), white / grey (saturation < 0.2, by value), brown (orange or
red hue, value < 0.6), then by hue: red, orange, yellow, green, blue, purple, pink. A colour is dominant when it
covers at least DOMINANT_SHARE of the (opaque) pixels; at most three are named, most common first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SIDE = 128  # pixels on the longer side the facts are measured at
DOMINANT_SHARE = 0.2
MAX_COLOURS = 3
COLOURS = ("black", "white", "grey", "brown", "red", "orange", "yellow", "green", "blue", "purple", "pink")
HUES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"), (290, "purple"), (340, "pink"),
        (361, "red"))  # upper hue bound in degrees -> name


@dataclass
class VisualFacts:
    colours: list[str] = field(default_factory=list)  # dominant colour names, most common first
    brightness: float = 0.0  # mean luminance in 0..1
    colourfulness: float = 0.0  # mean saturation of the opaque pixels in 0..1 (0 for a grey-level image)

    def describe(self) -> str:
        colours = ", ".join(self.colours) or "mixed"
        return f"Colours: {colours}; brightness {self.brightness:.2f}; colourfulness {self.colourfulness:.2f}"


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 RGB -> (n,) colour names from COLOURS."""
    x = rgb.astype(np.float64) / 255.0
    mx, mn = x.max(1), x.min(1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-9), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    safe = np.maximum(chroma, 1e-9)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    names = np.full(len(x), "red", dtype=object)
    lower = 0
    for upper, name in HUES:
        names[(hue >= lower) & (hue < upper)] = name
        lower = upper
    names[(names == "orange") & (mx < 0.6)] = "brown"
    names[(names == "red") & (mx < 0.45) & (sat < 0.7)] = "brown"
    grey = sat < 0.2
    names[grey] = np.where(mx[grey] > 0.8, "white", "grey")
    names[mx < 0.2] = "black"
    return names


def measure(path: str | Path) -> VisualFacts:
    """The facts of the image file at `path` (OSError / ValueError if it cannot be read)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.thumbnail((SIDE, SIDE))
        rgba = np.asarray(im.convert("RGBA")).reshape(-1, 4)  # n 4
    opaque = rgba[rgba[:, 3] >= 128, :3] if (rgba[:, 3] < 255).any() else rgba[:, :3]
    if len(opaque) == 0:
        return VisualFacts()
    names = colour_names(opaque)
    values, counts = np.unique(names, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    share = counts[order] / counts.sum()
    colours = [str(values[i]) for i, s in zip(order, share) if s >= DOMINANT_SHARE][:MAX_COLOURS]
    x = opaque.astype(np.float64) / 255.0
    luminance = x @ np.array([0.2126, 0.7152, 0.0722])
    mx = x.max(1)
    sat = np.where(mx > 0, (mx - x.min(1)) / np.maximum(mx, 1e-9), 0.0)
    return VisualFacts(colours=colours, brightness=round(float(luminance.mean()), 3),
                       colourfulness=round(float(sat.mean()), 3))
