"""Frozen CLIP or SigLIP dual encoder from transformers: token states of both towers + their own zero-shot space.

Legend: b batch, n tokens, i tower width, s projection (shared) width.

Image states are the vision tower's last_hidden_state (every patch token, plus CLS for CLIP), text states the
text tower's last_hidden_state with the tokenizer mask. `shared` is the model's own L2-normalised projected
embedding (get_image_features / get_text_features), so zero-shot CLIP/SigLIP scores come for free.

SigLIP was trained on texts padded to its full length (64) and pools the LAST position, so its texts are padded
to that length and run without an attention mask, as in the original model; padding per batch would make the
pooled vector depend on the other texts in the batch. CLIP texts are padded per batch with the attention mask.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .base import Backbone, Features, default_device, to_rgb

SUPPORTED = ("clip", "siglip")


def _load_error(model: str, reason: object) -> ValueError:
    return ValueError(
        f"could not load CLIP/SigLIP model {model!r}: {reason}; "
        "pass a local path or a hub id reachable from this machine"
    )


def _load_preprocessors(model: str):
    """(tokenizer, image_processor): the processor's parts, or loaded one by one when it has no processor config."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        proc = AutoProcessor.from_pretrained(model)
    except Exception:  # no processor_config.json, or a processor class this install cannot build
        proc = None
    tokenizer = getattr(proc, "tokenizer", None) or AutoTokenizer.from_pretrained(model)
    image_processor = getattr(proc, "image_processor", None) or AutoImageProcessor.from_pretrained(model)
    return tokenizer, image_processor


class ClipBackbone(Backbone):
    name = "clip"

    def __init__(self, model: str, device: torch.device | str | None = None):
        from transformers import AutoModel

        self.model_id = str(model)
        try:
            net = AutoModel.from_pretrained(self.model_id)
            self.tokenizer, self.image_processor = _load_preprocessors(self.model_id)
        except Exception as e:
            raise _load_error(self.model_id, e) from e
        kind = net.config.model_type
        if kind not in SUPPORTED:
            raise _load_error(self.model_id, f"it is a {kind!r} model, expected one of {SUPPORTED}")
        self.siglip = kind == "siglip"
        self.net = net.eval().requires_grad_(False)

        vision, text = net.config.vision_config, net.config.text_config
        self.image_dim, self.text_dim = vision.hidden_size, text.hidden_size
        self.shared_dim = text.projection_size if self.siglip else net.config.projection_dim
        limits = [m for m in (self.tokenizer.model_max_length, text.max_position_embeddings) if m and m < 1_000_000]
        self.max_length = min(limits)
        self.to(device or default_device())

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def spec(self) -> dict:
        return {"name": self.name, "model": self.model_id}

    @torch.no_grad()  # not inference_mode: trainable heads must be able to save these tensors for backward
    def encode_images(self, images: Sequence[Image.Image]) -> Features:
        if len(images) == 0:
            return self._empty(self.image_dim)
        pixels = self.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")["pixel_values"]
        out = self.net.get_image_features(pixel_values=pixels.to(self.device), return_dict=True)
        states = out.last_hidden_state.float()  # b n i
        mask = torch.ones(states.shape[:2], dtype=torch.bool, device=self.device)
        return Features(states, mask, F.normalize(out.pooler_output.float(), dim=-1))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Features:
        if len(texts) == 0:
            return self._empty(self.text_dim)
        padding = "max_length" if self.siglip else "longest"
        tok = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = tok["input_ids"].to(self.device)  # b n
        if "attention_mask" in tok:
            mask = tok["attention_mask"].to(self.device).bool()
        else:
            mask = ids != self.tokenizer.pad_token_id
        attn = None if self.siglip else mask.long()
        out = self.net.get_text_features(input_ids=ids, attention_mask=attn, return_dict=True)
        return Features(out.last_hidden_state.float(), mask, F.normalize(out.pooler_output.float(), dim=-1))

    def _empty(self, dim: int) -> Features:
        return Features(
            torch.zeros(0, 0, dim, device=self.device),
            torch.zeros(0, 0, dtype=torch.bool, device=self.device),
            torch.zeros(0, self.shared_dim, device=self.device),
        )
