"""The retrieval model: a frozen backbone, the aligner, and the blend with the backbone's zero-shot space.

Legend: b batch, s shared (zero-shot) width, e aligner width, p prototypes, i pooled backbone width.

Every item (image or text) has a zero-shot vector s, an aligned vector e and a familiarity g in [0, 1]: how close
it is to what the aligner was trained on (its nearest training item, by the backbone's pooled states). The score
of a query q against a stored document d interpolates the two spaces by the product of their familiarities:

    score = (1 - g_q g_d) <s_q, s_d> + g_q g_d <e_q, e_d>

and is a plain dot product of  query = [s, g e, g s]  and  document = [s, g e, -g s]  (width 2s + e).
A query and a document both from the training domain are compared by the aligner; anything else (a photo when
the aligner saw only digits, a text about tax law) by the zero-shot space, so training on a narrow domain cannot
hurt other collections. Scores stay interpolations of cosines, in [-1, 1]. An untrained aligner has g = 0.
Backbones without a shared space (Qwen2-VL) use the aligned vector alone, for both roles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbones.base import Backbone, Features
from .model import Aligner

Role = Literal["query", "document"]


@dataclass
class BlendConfig:
    trained: bool = False  # False: the aligner is untrained, vectors are the zero-shot space alone
    text_low: float = 0.45  # nearest-training-caption cosine at which a text starts to count as familiar
    text_high: float = 0.75  # ... and at which it is fully familiar
    image_low: float = 0.5  # the same for images (calibrated on the training images by `calibrate_image_gate`)
    image_high: float = 0.65


class RetrievalModel:
    def __init__(
        self,
        backbone: Backbone,
        aligner: Aligner,
        blend: BlendConfig | None = None,
        prototypes: dict[str, torch.Tensor] | None = None,  # {"text": p i, "image": p i} pooled training items
    ):
        self.backbone, self.aligner = backbone, aligner.eval()
        self.blend = blend or BlendConfig()
        self.prototypes = prototypes or {}
        self.device = getattr(backbone, "device", torch.device("cpu"))
        self.aligner.to(self.device)

    @property
    def has_shared(self) -> bool:
        return self.backbone.shared_dim > 0

    @property
    def dim(self) -> int:
        e = self.aligner.cfg.embed_dim
        return 2 * self.backbone.shared_dim + e if self.has_shared else e

    # -- public API: PIL images / strings -> vectors (numpy float32), compared by dot product ------------
    # Store items as "document" vectors and search with "query" vectors, with an inner-product index (the
    # vectors are not unit-norm). Asking for both roles encodes the items once.
    def encode_images(self, images: Sequence[Image.Image], *, role: Role | tuple[Role, ...], batch_size: int = 32):
        return self._batched(self.backbone.encode_images, self.image_vectors, images, role, batch_size)

    def encode_texts(self, texts: Sequence[str], *, role: Role | tuple[Role, ...], batch_size: int = 64):
        return self._batched(self.backbone.encode_texts, self.text_vectors, texts, role, batch_size)

    def _batched(self, encode, assemble, items: Sequence, role, batch_size: int):
        roles = (role,) if isinstance(role, str) else tuple(role)
        if any(r not in ("query", "document") for r in roles):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}")
        out: dict[str, list] = {r: [] for r in roles}
        for i in range(0, len(items), batch_size):
            f = encode(items[i : i + batch_size])
            for r in roles:
                out[r].append(assemble(f, r))
        arrays = [torch.cat(v).float().cpu().numpy() if v else np.zeros((0, self.dim), np.float32) for v in out.values()]
        return arrays[0] if isinstance(role, str) else tuple(arrays)

    # -- features -> vectors ------------------------------------------------------------------------
    @property
    def zero_shot(self) -> bool:
        """True when the vectors are the backbone's zero-shot space alone (untrained aligner: every g is 0)."""
        return self.has_shared and not self.blend.trained

    @torch.no_grad()
    def image_vectors(self, f: Features, role: Role) -> torch.Tensor:
        e = self._skipped(f) if self.zero_shot else self.aligner.encode_image(f.states.float(), f.mask)["embeds"]
        return self._assemble(f, e, "image", role)  # b e above

    @torch.no_grad()
    def text_vectors(self, f: Features, role: Role) -> torch.Tensor:
        e = self._skipped(f) if self.zero_shot else self.aligner.encode_text(f.states.float(), f.mask)["embeds"]
        return self._assemble(f, e, "text", role)

    def _skipped(self, f: Features) -> torch.Tensor:
        """The aligner's output when it would be multiplied by g = 0: zeros, b e (not computed)."""
        return torch.zeros(len(f.states), self.aligner.cfg.embed_dim, device=f.states.device)

    def _assemble(self, f: Features, e: torch.Tensor, modality: str, role: Role) -> torch.Tensor:
        if not self.has_shared:
            return e
        s = f.shared.float()  # b s
        g = self.familiarity(f, modality).unsqueeze(-1)  # b 1
        sign = 1.0 if role == "query" else -1.0
        return torch.cat([s, g * e, sign * g * s], dim=-1)  # b 2s+e

    def familiarity(self, f: Features, modality: str) -> torch.Tensor:
        """b items -> b in [0, 1]: cosine to the nearest training item, ramped between the blend's bounds."""
        protos = self.prototypes.get(modality)
        if not self.blend.trained or protos is None or not len(protos):
            return torch.zeros(len(f.states), device=f.states.device)
        nearest = (pooled(f) @ protos.to(f.states.device).float().T).max(-1).values  # b
        lo, hi = (self.blend.text_low, self.blend.text_high) if modality == "text" else (
            self.blend.image_low, self.blend.image_high)
        return ((nearest - lo) / (hi - lo)).clamp(0, 1)


def pooled(f: Features) -> torch.Tensor:
    """Masked mean of the backbone token states, unit norm: b n i -> b i."""
    w = f.mask.unsqueeze(-1).to(f.states.dtype)
    return F.normalize((f.states.float() * w).sum(1) / w.sum(1).clamp(min=1), dim=-1)


def select_prototypes(vectors: torch.Tensor, limit: int = 1024, seed: int = 0) -> torch.Tensor:
    """Distinct unit vectors kept for the familiarity gate: all of them, or `limit` k-means centres."""
    x = torch.unique(F.normalize(vectors.float(), dim=-1), dim=0)
    if len(x) <= limit:
        return x
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:limit]]
    for _ in range(10):  # spherical k-means
        assign = (x @ centres.T).argmax(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = sums.norm(dim=-1) > 0
        centres[filled] = F.normalize(sums[filled], dim=-1)
    return centres


def calibrate_gate(vectors: torch.Tensor, width: float = 0.05, quantile: float = 0.05) -> tuple[float, float]:
    """(low, high) for a familiarity gate: high = the 5th percentile of each training item's cosine to its
    nearest *other* training item, so held-in items count as fully familiar; low = high - width."""
    x = F.normalize(vectors.float(), dim=-1)
    if len(x) < 2:
        return 0.75, 0.9
    sims = x @ x.T
    sims.fill_diagonal_(-1.0)
    high = float(torch.quantile(sims.max(-1).values, quantile).clamp(max=0.95))
    return high - width, high
