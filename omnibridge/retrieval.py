"""The retrieval model: a frozen backbone, the aligner, and the blend with the backbone's zero-shot space.

Legend: b batch, s shared (zero-shot) width, e aligner width, p caption prototypes.

Vectors are unit-norm concatenations, so one cosine search serves every direction:
  image  = [a * shared, b * aligned]        a, b fixed (a = b when the aligner is trained)
  text   = [c * shared, d * aligned]        d = sqrt(w), c = sqrt(1 - w), w per query
The per-query weight w is the blend's `max_weight` times how familiar the text is to the captions the
aligner was trained on (its nearest training caption in the shared space, ramped between `familiar_low`
and `familiar_high`). A query from the training domain is answered by the aligner; anything else falls
back to the backbone's zero-shot space, so training on a narrow domain cannot hurt other collections.
Backbones without a shared space (Qwen2-VL) use the aligned vector alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbones.base import Backbone, Features
from .model import Aligner


@dataclass
class BlendConfig:
    trained: bool = False  # False: the aligner is untrained, vectors are the zero-shot space alone
    max_weight: float = 1.0  # weight of the aligned score for a fully familiar query
    familiar_low: float = 0.45  # nearest-training-caption cosine at which the aligner starts to count
    familiar_high: float = 0.75  # ... and at which it gets max_weight


class RetrievalModel:
    def __init__(
        self,
        backbone: Backbone,
        aligner: Aligner,
        blend: BlendConfig | None = None,
        prototypes: torch.Tensor | None = None,  # p s shared embeddings of training captions
    ):
        self.backbone, self.aligner = backbone, aligner.eval()
        self.blend = blend or BlendConfig()
        self.prototypes = prototypes
        self.device = getattr(backbone, "device", torch.device("cpu"))
        self.aligner.to(self.device)

    @property
    def has_shared(self) -> bool:
        return self.backbone.shared_dim > 0

    @property
    def dim(self) -> int:
        return self.backbone.shared_dim + self.aligner.cfg.embed_dim if self.has_shared else self.aligner.cfg.embed_dim

    # -- public API: PIL images / strings -> unit vectors (numpy float32) ------------------------------
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [self.image_vectors(self.backbone.encode_images(images[i : i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = [self.text_vectors(self.backbone.encode_texts(texts[i : i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.dim), np.float32)

    # -- features -> vectors ------------------------------------------------------------------------
    @torch.inference_mode()
    def image_vectors(self, f: Features) -> torch.Tensor:
        e = self.aligner.encode_image(f.states.float(), f.mask)["embeds"]  # b e
        if not self.has_shared:
            return e
        b_weight = math.sqrt(0.5) if self.blend.trained else 0.0
        a_weight = math.sqrt(1 - b_weight**2)
        return torch.cat([a_weight * f.shared, b_weight * e], dim=-1)  # b s+e

    @torch.inference_mode()
    def text_vectors(self, f: Features) -> torch.Tensor:
        e = self.aligner.encode_text(f.states.float(), f.mask)["embeds"]  # b e
        if not self.has_shared:
            return e
        w = self.aligned_weight(f.shared).unsqueeze(-1)  # b 1
        return torch.cat([(1 - w).sqrt() * f.shared, w.sqrt() * e], dim=-1)  # b s+e

    def aligned_weight(self, shared: torch.Tensor) -> torch.Tensor:
        """b s shared text embeddings -> b weights in [0, max_weight]: how much the aligner answers."""
        if not self.blend.trained:
            return shared.new_zeros(len(shared))
        if self.prototypes is None or not len(self.prototypes):
            return shared.new_full((len(shared),), self.blend.max_weight)
        nearest = (shared @ self.prototypes.to(shared).T).max(-1).values  # b
        lo, hi = self.blend.familiar_low, self.blend.familiar_high
        return self.blend.max_weight * ((nearest - lo) / (hi - lo)).clamp(0, 1)

    def describe(self) -> dict:
        return {"backbone": self.backbone.spec(), "aligner": self.aligner.cfg.to_dict(), "blend": asdict(self.blend),
                "dim": self.dim, "prototypes": 0 if self.prototypes is None else len(self.prototypes)}


def caption_prototypes(shared: torch.Tensor, limit: int = 4096, seed: int = 0) -> torch.Tensor:
    """Distinct training-caption embeddings kept for the familiarity gate (a seeded subset beyond `limit`)."""
    uniq = torch.unique(F.normalize(shared.float(), dim=-1), dim=0)
    if len(uniq) > limit:
        g = torch.Generator().manual_seed(seed)
        uniq = uniq[torch.randperm(len(uniq), generator=g)[:limit]]
    return uniq
