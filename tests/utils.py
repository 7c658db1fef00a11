"""Test factories: a tiny deterministic backbone and tiny captioned-image sets written to disk."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omnibridge.backbones.base import Backbone, Features, to_rgb

WIDTH = 32


class TinyBackbone(Backbone):
    """Images: 4x4 grid of RGB means -> 16 tokens; texts: one hashed vector per word. Width 32, shared 32."""

    name = "tiny-test"
    image_dim = text_dim = shared_dim = WIDTH

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pixel_proj = torch.randn(3, WIDTH, generator=g)
        self.device = torch.device("cpu")

    def spec(self) -> dict:
        return {"name": self.name, "model": "tiny"}

    def encode_images(self, images) -> Features:
        arr = np.stack([np.asarray(to_rgb(im).resize((4, 4), Image.Resampling.BOX), np.float32) / 255 for im in images])
        states = torch.from_numpy(arr).reshape(len(images), 16, 3) @ self.pixel_proj  # b 16 w
        mask = torch.ones(len(images), 16, dtype=torch.bool)
        return Features(states, mask, F.normalize(states.mean(1), dim=-1))

    def encode_texts(self, texts) -> Features:
        words = [t.lower().split() or [""] for t in texts]
        n = max(len(w) for w in words)
        states = torch.zeros(len(texts), n, WIDTH)
        mask = torch.zeros(len(texts), n, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                states[i, j] = torch.randn(WIDTH, generator=g)
                mask[i, j] = True
        shared = F.normalize((states * mask[..., None]).sum(1), dim=-1)
        return Features(states, mask, shared)


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_colour_pairs(root: Path, per_colour: int = 6, seed: int = 0) -> Path:
    """Solid-colour squares with a noisy stripe, captioned "a red square" etc.; returns the PAIRS.jsonl path."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, rgb in COLOURS.items():
        for k in range(per_colour):
            a = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = root / "img" / f"{name}{k}.png"
            Image.fromarray(a).save(path)
            lines.append({"image": f"img/{path.name}", "caption": f"a {name} square", "id": f"{name}{k}"})
    out = root / "pairs.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out
