"""Held-out retrieval before and after `align`, and the photo search after it (does training hurt elsewhere?).

    python bench/datasets.py /work/data                      # builds the data sets (once)
    python bench/align.py /work/data [--only mnist|emoji] [--epochs N] [--views V]

For each experiment: the documented zero-shot bridge, our bridge and the shipped default on the held-out set ("before"), then a fresh
aligner trained with `omnibridge.train.align` on the training split ("after"), on the held-out set and on
scikit-image's captioned photos. Results go to bench/out/align.json and are copied by hand to bench/RESULTS.md.
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

from omnibridge import create_model, load_model  # noqa: E402
from omnibridge.data import read_pairs  # noqa: E402
from omnibridge.evaluate import evaluate  # noqa: E402
from omnibridge.train import AlignConfig, align  # noqa: E402

EXPERIMENTS = {
    # name: (train file, held-out files)
    "mnist": ("mnist/train.jsonl", ["mnist/test.jsonl", "sklearn-digits/test.jsonl"]),
    "emoji": ("emoji/style_a.jsonl", ["emoji/style_b.jsonl"]),
}
PHOTOS = "skimage-photos/pairs.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--only", choices=sorted(EXPERIMENTS))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--eval-only", action="store_true", help="re-evaluate the checkpoints already in --out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bridge, default = load_model("bridge"), load_model("default")
    baselines = {"bridge-baseline": load_model("bridge-baseline"), "bridge": bridge, "default": default}
    photos = read_pairs(args.data / PHOTOS)
    results = {"photos": {name: evaluate(m, photos) for name, m in baselines.items()}}
    for name, (train_file, test_files) in EXPERIMENTS.items():
        if args.only and name != args.only:
            continue
        tests = {f: read_pairs(args.data / f) for f in test_files}
        r = {"before": {f: {name: evaluate(m, p) for name, m in baselines.items()} for f, p in tests.items()}}
        cfg = AlignConfig(epochs=args.epochs, views=args.views, lr=3e-4)
        if args.eval_only:
            model = load_model(args.out / f"ckpt-{name}", backbone=bridge.backbone)
        else:
            model = create_model("bundled-small", bridge.backbone)
            t = time.perf_counter()
            align(model, read_pairs(args.data / train_file), args.out / f"ckpt-{name}", cfg, progress=False)
            r["train_seconds"] = round(time.perf_counter() - t, 1)
        r["config"] = vars(cfg)
        r["after"] = {f: evaluate(model, p) for f, p in tests.items()}
        r["after"]["photos"] = evaluate(model, photos)
        results[name] = r
        print(json.dumps({name: r}, indent=1), flush=True)
    dest = args.out / (f"align-{args.only}.json" if args.only else "align.json")
    dest.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["photos"]))


if __name__ == "__main__":
    main()
