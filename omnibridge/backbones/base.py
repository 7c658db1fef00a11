"""One interface for every frozen backbone: token hidden states + mask for images and for texts.

Legend: b batch, n tokens, i backbone width, s shared-space width.

A backbone may also offer a `shared` vector per item: a zero-shot image-text space it already has
(CLIP's projections, or the bundled encoders' bridge through the classifier's label space). The
retrieval model blends it with the aligner's embedding; backbones without one leave it None.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image


@dataclass
class Features:
    states: torch.Tensor  # b n i, float
    mask: torch.Tensor  # b n, bool, True = valid token
    shared: torch.Tensor | None = None  # b s unit vectors in the backbone's own zero-shot space


class Backbone(ABC):
    """A frozen encoder pair. Subclasses load lazily-heavy weights in __init__ and never train them."""

    name: str
    image_dim: int
    text_dim: int
    shared_dim: int = 0

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> Features: ...

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> Features: ...

    @abstractmethod
    def spec(self) -> dict:
        """What a checkpoint records to rebuild this backbone: {"name": ..., "model": ..., ...}."""

    @property
    def identity(self) -> dict:
        """The fields a checkpoint's backbone must match: name, model and widths."""
        s = self.spec()
        return {"name": s["name"], "model": s.get("model"), "image_dim": self.image_dim, "text_dim": self.text_dim}

    def to(self, device: torch.device | str) -> "Backbone":
        for m in self.modules():
            m.to(device)
        self.device = torch.device(device)
        return self

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules this backbone holds (moved by `to`)."""
        return []


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL image (palette, alpha over white, greyscale, CMYK, 16-bit)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(image, dtype=np.float64)
        a = (255 * (a - a.min()) / max(a.max() - a.min(), 1)).astype("uint8")
        return Image.fromarray(a).convert("RGB")
    return image.convert("RGB")
