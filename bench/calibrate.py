"""Fit and check the relevance calibration of a model: raw similarity -> probability that a hit is relevant.

    python bench/calibrate.py data [--model default] [--write]      # data from `python bench/datasets.py data`

Held-out real data only (nothing the shipped aligner was trained on): the 21 scikit-image photos, 1,000 MNIST test
digits and the 1,906 Twitter-style emoji, pooled into one collection of 2,927 images.
- text -> image: each distinct caption is a query; relevant = an image of the same set with that caption (the photo,
  every digit of that class, the emoji of that concept).
- image -> image: six views of each photo query the pool, relevant = its photo: two near-duplicates (a smaller
  JPEG) and four reframed ones (crop, flip, colour, JPEG);
  and every 4th MNIST digit, relevant = the other digits of its class (reported only: the fit uses the photo views,
  see `fitted_on`).
Queries are split in two halves by a hash of their text (calibration / test). On the calibration half, a logistic
regression p = sigmoid(a * similarity + b) is fitted per query kind on the top-50 hits of every query (what a
user would be shown: relevant ones are positives, the rest negatives). For image queries the relevant and the other
hits are weighted to equal totals (`balanced`): "more like this" relevance reads as how alike two pictures are
(a near-identical copy near 1, the same scene reframed high, an unrelated picture low), where the base rate of one
right photo among 50 hits would cap even an identical copy at 0.06. Then the "no good match" threshold is the p
that best separates queries whose answer is in the collection from queries whose answer is not (the same queries
with their relevant images left out of the pool), by balanced accuracy. The test half reports: calibration (Brier,
expected calibration error), and for present / absent queries how often the engine says no_match.
With --write the fit goes to engine/calibration/<model>.json (or calibration.json in a checkpoint folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.relevance import Calibration, calibration_path  # noqa: E402
from omnibridge import load_model  # noqa: E402
from omnibridge.data import read_pairs  # noqa: E402

SETS = {"photos": "skimage-photos/pairs.jsonl", "mnist": "mnist/test.jsonl", "emoji": "emoji/style_b.jsonl"}
TOP = 50  # hits per query in the fit: what a user is shown


def encode_set(model, path: Path, cache: Path) -> dict:
    if cache.is_file():
        return dict(np.load(cache, allow_pickle=True))
    pairs = read_pairs(path)
    imgs = [pairs.load_image(i) for i in range(len(pairs.images))]
    docs = model.encode_images(imgs, role="document")  # m D
    queries = model.encode_images(imgs, role="query")  # m D
    caps = [None] * len(pairs.images)
    for cap, im in zip(pairs.captions, pairs.caption_image):
        caps[im] = caps[im] or cap
    out = {"docs": docs, "img_queries": queries, "captions": np.array(caps, dtype=object),
           "ids": np.array(pairs.image_ids, dtype=object)}
    np.savez(cache, **out)
    return out


def fitted_on(query) -> bool:
    """Image queries are fitted on the photo views only: "more like this" relevance is "the same picture or
    scene", and the bundled model does not see a digit's class (MNIST image queries are reported, not fitted)."""
    return query[0] == "text" or query[4].startswith("photos")


def half(text: str) -> str:
    return "cal" if zlib.crc32(text.encode()) % 2 == 0 else "test"


def pooled(model, data: Path, cache_dir: Path):
    cache_dir.mkdir(parents=True, exist_ok=True)
    sets = {name: encode_set(model, data / rel, cache_dir / f"{name}.npz") for name, rel in SETS.items()}
    docs = np.concatenate([s["docs"] for s in sets.values()])  # N D
    origin = np.concatenate([[name] * len(s["docs"]) for name, s in sets.items()])
    captions = np.concatenate([s["captions"] for s in sets.values()])
    return sets, docs, origin, captions


def text_queries(model, sets, origin, captions):
    """(kind, split, query vector, relevant mask over the pool) per distinct caption."""
    out = []
    for name, s in sets.items():
        texts = sorted(set(s["captions"]))
        vecs = model.encode_texts(texts, role="query")
        for t, v in zip(texts, vecs):
            out.append(("text", half(t), v, (origin == name) & (captions == t), f"{name}: {t}", None))
    return out


def image_queries(model, data: Path, cache_dir: Path, sets, origin, captions):
    """More like this: (a) every 4th MNIST test digit queries the pool (itself left out by the caller: relevant =
    the other digits of its class); (b) an augmented view of each photo (crop, flip, colour, JPEG) queries the pool
    (relevant = its photo)."""
    out = []
    mnist_at = np.flatnonzero(origin == "mnist")
    for j in mnist_at[::4]:
        relevant = (origin == "mnist") & (captions == captions[j])
        relevant[j] = False
        out.append(("image", half(f"mnist-{j}"), sets["mnist"]["img_queries"][j - mnist_at[0]], relevant,
                    f"mnist image {j}", j))
    views = _photo_views(model, data, cache_dir)
    photo_at = np.flatnonzero(origin == "photos")
    for n, v in enumerate(views["vecs"]):
        relevant = np.zeros(len(origin), bool)
        relevant[photo_at[views["source"][n]]] = True
        out.append(("image", half(f"photo-{views['source'][n]}"), v, relevant, f"photos view {n}", None))
    return out


def _photo_views(model, data: Path, cache_dir: Path) -> dict:
    import io

    from PIL import Image, ImageEnhance, ImageOps

    cache = cache_dir / "photo-views.npz"
    if cache.is_file():
        return dict(np.load(cache))
    pairs = read_pairs(data / SETS["photos"])
    rng = np.random.default_rng(0)
    images, source = [], []
    for i in range(len(pairs.images)):
        im = pairs.load_image(i).convert("RGB")
        for scale in (0.5, 0.75):  # near-duplicates: a smaller JPEG of the same picture
            buf = io.BytesIO()
            im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale)))).save(buf, "JPEG", quality=85)
            images.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            source.append(i)
        for _ in range(4):  # the same scene, reframed and re-coloured
            w, h = im.size
            f = rng.uniform(0.6, 0.9)
            x, y = rng.integers(0, int(w * (1 - f)) + 1), rng.integers(0, int(h * (1 - f)) + 1)
            v = im.crop((x, y, x + int(w * f), y + int(h * f)))
            v = ImageOps.mirror(v) if rng.random() < 0.5 else v
            v = ImageEnhance.Color(v).enhance(rng.uniform(0.6, 1.4))
            buf = io.BytesIO()
            v.save(buf, "JPEG", quality=int(rng.integers(40, 90)))
            images.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            source.append(i)
    out = {"vecs": model.encode_images(images, role="query"), "source": np.array(source)}
    np.savez(cache, **out)
    return out


def samples(queries, docs):
    """Top-TOP hits of every query: (similarity, relevant, weight) triples, weights making every source set count
    the same; and per query the best similarity with and without its relevant images (present / absent)."""
    sources = [q[4].split(":")[0].split(" ")[0] for q in queries]
    per_source = {src: sources.count(src) for src in set(sources)}
    sims, labels, weights, present, absent = [], [], [], [], []
    for q, src in zip(queries, sources):
        _, _, v, rel, _, itself = q
        s = docs @ v  # N
        if itself is not None:
            s[itself] = -np.inf  # the query image is not its own hit
        top = np.argsort(-s)[:TOP]
        sims.append(s[top]), labels.append(rel[top]), weights.append(np.full(TOP, 1 / per_source[src]))
        present.append(s[rel].max())
        absent.append(s[~rel].max())
    return (np.concatenate(sims), np.concatenate(labels).astype(float), np.concatenate(weights),
            np.array(present), np.array(absent), sources)


def balanced(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Weights giving the relevant and the other hits the same total: the fit then says how alike a hit is (even
    prior odds), not how rare relevant hits are in a top-50 list (one right photo among 49 others)."""
    pos = labels > 0.5
    out = weights.copy()
    out[pos] *= weights[~pos].sum() / weights[pos].sum()
    return out


def fit(sims: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted logistic regression of labels on similarity by Newton's method (tiny L2 on a for stability)."""
    x = np.stack([sims, np.ones_like(sims)], 1)  # n 2
    w = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (weights * (p - labels)) + np.array([1e-3 * w[0], 0])
        hess = (x * (weights * p * (1 - p))[:, None]).T @ x + np.diag([1e-3, 1e-9])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (p >= lo) & (p < hi if hi < 1 else p <= hi)
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def threshold(cal: Calibration, kind: str, present: np.ndarray, absent: np.ndarray, sources: list[str]) -> float:
    """The relevance cut that best separates present from absent queries: balanced accuracy, averaged over the
    source sets so each counts the same."""
    pp, pa = cal.prob(kind, present), cal.prob(kind, absent)
    src = np.array(sources)

    def balanced(t: float) -> float:
        return np.mean([((pp[src == x] >= t).mean() + (pa[src == x] < t).mean()) / 2 for x in set(sources)])

    return float(max(np.unique(np.concatenate([pp, pa])), key=balanced))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--write", action="store_true", help="save the fit where the engine reads it")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    cache = args.data / ".calibration-cache" / Path(args.model).name
    sets, docs, origin, captions = pooled(model, args.data, cache)
    queries = text_queries(model, sets, origin, captions) + image_queries(model, args.data, cache, sets, origin,
                                                                          captions)

    params, report = {}, {"model": args.model, "pool": {n: int((origin == n).sum()) for n in SETS}, "kinds": {}}
    for kind in ("text", "image"):
        sims, labels, weights, present, absent, sources = samples(
            [q for q in queries if q[0] == kind and q[1] == "cal" and fitted_on(q)], docs)
        if kind == "image":
            weights = balanced(weights, labels)
        a, b = fit(sims, labels, weights)
        params[kind] = {"a": a, "b": b}
        params[kind]["threshold"] = threshold(Calibration(params), kind, present, absent, sources)
    cal = Calibration({k: {"a": v["a"], "b": v["b"]} for k, v in params.items()},
                      thresholds={k: v["threshold"] for k, v in params.items()})
    for kind in ("text", "image"):
        for split in ("cal", "test"):
            sims, labels, weights, present, absent, sources = samples(
                [q for q in queries if q[0] == kind and q[1] == split], docs)
            p = cal.prob(kind, sims)
            row = {"queries": len(sources), "hits": int(len(sims)), "relevant_share": round(float(labels.mean()), 4),                    "brier": round(float(((p - labels) ** 2).mean()), 4), "ece": round(ece(p, labels), 4)}
            src = np.array(sources)
            for name in sorted(set(sources)):  # per source set: present queries matched, absent ones refused
                pp, pa = cal.prob(kind, present[src == name]), cal.prob(kind, absent[src == name])
                row[name] = {"queries": int((src == name).sum()),
                             "present_matched": round(float((pp >= cal.threshold(kind)).mean()), 3),
                             "absent_no_match": round(float((pa < cal.threshold(kind)).mean()), 3)}
            report["kinds"].setdefault(kind, {})[split] = row
    report["fit"] = params
    print(json.dumps(report, indent=1))
    if args.write:
        path = calibration_path(args.model)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"fit": params, "data": "bench/calibrate.py: held-out photos, MNIST test, Twitter emoji (cal half)",
                "test": {k: v["test"] for k, v in report["kinds"].items()}}
        path.write_text(json.dumps(body, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
