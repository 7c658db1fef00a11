"""End-to-end ingestion throughput versus the bare encoder on the same images, in one run.

    python bench/ingest.py [--n 2000] [--out bench/out]

The library: N distinct JPEGs (random crops, flips and colour shifts of scikit-image's photos, 256 px, seed 0).
Phases, each in its own process so peak memory (max RSS) is per phase:
  encoder   decode each file with Pillow and embed it with the model in batches: the floor for any pipeline
  pipeline  `omnibridge ingest` as users run it: embedded SQLite broker + in-process Celery worker, SQLite
            metadata, Qdrant Edge; scan, sha256, validation, perceptual hash, embed, upsert, near-duplicate grouping
  encoder   again, so machine drift shows (the baseline is the mean of the two)
Target: the pipeline keeps at least 80% of the encoder's images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_library(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image, ImageOps

    from engine.samples import PHOTO_LOADERS, write_photo_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    src = write_photo_sample(folder.parent / "photos").parent / "images"
    photos = [Image.open(src / f"{name}.png").convert("RGB") for name in PHOTO_LOADERS if (src / f"{name}.png").exists()]
    rng = np.random.default_rng(seed)
    for i, p in enumerate(paths):
        im = photos[i % len(photos)]
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.4, 1.0))
        x, y = rng.integers(0, w - s + 1), rng.integers(0, h - s + 1)
        crop = im.crop((x, y, x + s, y + s)).resize((256, 256))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        shift = rng.integers(-25, 26, 3)
        arr = np.clip(np.asarray(crop, np.int16) + shift, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(p, quality=90)
    return paths


def phase_encoder(folder: Path, batch: int) -> dict:
    from PIL import Image

    from omnibridge import load_model

    model = load_model("default", device="cpu")
    paths = sorted(folder.glob("*.jpg"))
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
        model.encode_images(images, role="document", batch_size=batch)
    dt = time.perf_counter() - t0
    return {"images": len(paths), "seconds": dt, "images_per_s": len(paths) / dt}


def phase_pipeline(folder: Path, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        os.environ.update(OMNIBRIDGE_HOME=home, OMNIBRIDGE_BATCH_SIZE=str(batch))
        from engine.services import get_services
        from ingest import pipeline, worker

        svc = get_services()
        svc.model  # loading the model is start-up, not ingestion (the encoder phase also loads it untimed)
        t0 = time.perf_counter()
        with worker.in_process_worker(1):
            job = worker.submit([str(folder)], "bench")
            while pipeline.job_summary(svc, job)["status"] not in ("done", "failed"):
                time.sleep(0.1)
        dt = time.perf_counter() - t0
        summary = pipeline.job_summary(svc, job)
        _, space, _ = svc.model_row()
        points = svc.store.count(space)
        svc.close()
    return {"images": summary["indexed"], "failed": summary["failed"], "points": points, "seconds": dt,
            "images_per_s": summary["indexed"] / dt}


def run_phase(name: str, folder: Path, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--library", str(folder), "--batch", str(batch)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--phase", choices=["encoder", "pipeline"], help=argparse.SUPPRESS)
    ap.add_argument("--library", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        result = (phase_encoder if args.phase == "encoder" else phase_pipeline)(args.library, args.batch)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    folder = args.out / "ingest-library"
    build_library(folder, args.n)
    runs = {}
    for name in ("encoder", "pipeline", "encoder2"):
        runs[name] = run_phase(name.rstrip("2"), folder, args.batch)
        print(f"{name:9s} {runs[name]['images_per_s']:6.1f} images/s  {runs[name]['seconds']:6.1f} s  "
              f"max RSS {runs[name]['max_rss_mb']:.0f} MB", file=sys.stderr)
    base = (runs["encoder"]["images_per_s"] + runs["encoder2"]["images_per_s"]) / 2
    runs["ratio"] = runs["pipeline"]["images_per_s"] / base
    runs["n"], runs["cpus"] = args.n, os.cpu_count()
    print(f"pipeline keeps {runs['ratio']:.1%} of the encoder's throughput (target >= 80%)", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
