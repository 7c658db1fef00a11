"""Encoding throughput on the CPU: the bundled backbone alone versus backbone + aligner, on the same batches.

    python bench/encode.py [--images 512] [--texts 2048] [--batch 32] [--model default]

Images are scikit-image's photos (repeated to the count), texts are their captions with numbered variants.
Both paths run interleaved batch by batch in one process, so machine noise hits both alike. The figure is
the aligner's cost on top of the backbone: (t_full - t_backbone) / t_backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.samples import write_photo_sample  # noqa: E402
from omnibridge import load_model  # noqa: E402
from omnibridge.data import read_pairs  # noqa: E402


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=Path.home() / ".omnibridge" / "samples" / "photos")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    pairs = read_pairs(write_photo_sample(args.data))
    photos = [pairs.load_image(i) for i in range(len(pairs.images))]
    images = [photos[i % len(photos)] for i in range(args.images)]
    texts = [f"{pairs.captions[i % len(pairs.captions)]} ({i})" for i in range(args.texts)]
    bb = model.backbone
    results = {"threads": torch.get_num_threads(), "batch": args.batch, "model": args.model}
    for kind, items, bare, full in (
        ("images", images, bb.encode_images, lambda b: model.image_vectors(bb.encode_images(b), "document")),
        ("texts", texts, bb.encode_texts, lambda b: model.text_vectors(bb.encode_texts(b), "query")),
    ):
        batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
        bare(batches[0]), full(batches[0])  # warm-up
        t_bare = t_full = 0.0
        for b in batches:
            t_bare += timed(bare, b)
            t_full += timed(full, b)
        results[kind] = {
            "n": len(items),
            "backbone_per_s": round(len(items) / t_bare, 1),
            "backbone_plus_aligner_per_s": round(len(items) / t_full, 1),
            "aligner_overhead": round((t_full - t_bare) / t_bare, 3),
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
