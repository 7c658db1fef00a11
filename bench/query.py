"""End-to-end text-query latency of `Engine.search` on the embedded default, by stage, versus numpy exact search.

    python bench/query.py [--sizes 10000 100000] [--queries 100] [--out bench/out/query.json]

What runs: `Engine.search(text=..., collection="photos", k=10)` as the CLI, API and UI call it, on the embedded
default (SQLite + Qdrant Edge through Services / SharedStore, the default model, CPU), one fresh temporary
OMNIBRIDGE_HOME per size. Engine.search is hybrid (the default mode) at the default
no-match threshold. Stages of each query, timed inside the same call by wrapping the Services' model and store
instances (no product code is changed):
  encode    model.encode_texts([text], role="query")
  vector    store.search(space, vec, k=pool, filter={kind, synthetic, collection}): the vector candidates
  keyword   store.keyword_search(space, terms, k=pool, filter=...): the BM25 candidates
  retrieve  store.retrieve(space, ids, with_vectors=True): the vectors of keyword-only candidates (their similarity)
  rest      the rest of Engine.search: argument checks, query terms, keyword coverage and relevance of every
            candidate, hit dicts, the collapse SQL count of the near-duplicate groups (total - the stages above)
Engine asks for pool = max(3 k, 50) candidates per side and grows it 4x while fewer than k hits reach the
threshold and unseen items could still reach it; "store calls" counts the rounds.
In the same run, per size, the store search alone (same query vectors, k, filter) against numpy exact search over
the same vectors (matrix @ q + argpartition + sort of the top k; no payloads, no filter: every point matches it),
alternated query by query so machine drift hits both alike; overlap@10 of the two top tens is a sanity check.
Also per size, Engine.search with the query vectors served from a dict (no encode), hybrid against vector mode,
alternated query by query: what the keyword side costs, measured against its own baseline in the same run (the
encode stage swings by hundreds of ms on a shared 2-core machine and would drown the difference).

The library is registered, not ingested (embedding 100k images would take hours on CPU): N `assets` rows with
status 'indexed', near_dup_group = id (no near-duplicates: each hit costs one group in the collapse count) are
inserted in bulk, and N points with payloads shaped like ingest.pipeline._payload go into the model's space with
`store.upsert` (the product's own write path, fsync per 1024-point batch), each with its keyword sparse vector
(engine.keywords.document_terms of keyword_text([caption, file name words]), as ingest writes them). Synthetic
captions: the caption of the point's source photo (its docstring summary, e.g. "Coffee cup.") plus 3 words drawn
at random from the 411 distinct words of the 21 loaders' full docstrings, so that keyword postings are long for
the photo words (1/21 of the points) and spread for the rest; the file name adds the photo name and a number.
No `optimize()` is run: the product never calls it, so searches are exact scans, which is what is measured.
SQL `texts`/`vectors` rows are not written: Engine.search does not read them.

The vectors are real-ish: the 21 scikit-image sample photos embedded with model.encode_images(role="document"),
and each point one of them perturbed with Gaussian noise inside the model's own vector layout. A document vector is
[s, g e, -g s] (s the unit zero-shot vector, e the unit aligner vector, g the familiarity in [0, 1]; see
omnibridge.retrieval), so its norm is sqrt(1 + 2 g^2), not 1. The noise is added to s and e, each is renormalised to
unit length and the vector is reassembled with the photo's own g: norms, the zero blocks (g = 0) and the -g s
mirror all stay exactly as the model writes them, and query-document scores stay interpolated cosines. Random unit
vectors would have none of that structure (and no clusters); 21 tight clusters is closer to a photo library, whose
scores the text queries actually rank. --noise is the per-dimension standard deviation before renormalising
(0.03 on 384 dims: cosine about 0.86 to the source photo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

K = 10
COLLECTION = "photos"
SQL_CHUNK = 5000
UPSERT_CHUNK = 8192  # points per store.upsert call (EdgeStore writes them in WAL batches of 1024)
WARMUP = 3
QUERIES = [
    "a cat", "a cup of coffee", "an astronaut", "a horse", "a rocket launch", "the moon", "coins on a table",
    "a clock", "a brick wall", "grass", "gravel on the ground", "a man with a camera", "cells under a microscope",
    "a page of printed text", "a colour wheel", "the night sky full of galaxies", "a retina scan",
    "a company logo", "a red and white photo of a person", "a close-up texture",
]


def photo_images() -> list:
    """(name, image, caption) of the sample photos, by name."""
    from PIL import Image

    from engine.samples import write_photo_sample

    folder = ROOT / "bench" / "out" / "photos"
    pairs = write_photo_sample(folder)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    return sorted(((r["id"], Image.open(pairs.parent / r["image"]).convert("RGB"), r["caption"]) for r in rows),
                  key=lambda t: t[0])


def vocabulary() -> list[str]:
    """Distinct words (3+ letters) of the full docstrings of the sample's skimage.data loaders."""
    import inspect
    import re

    import skimage.data

    from engine.samples import PHOTO_LOADERS

    words = set()
    for name in PHOTO_LOADERS:
        words |= {w.lower() for w in re.findall(r"[A-Za-z]{3,}", inspect.getdoc(getattr(skimage.data, name)) or "")}
    return sorted(words)


def captions_for(src: np.ndarray, photo_captions: list[str], seed: int = 1) -> list[str]:
    """Per point: its photo's caption plus 3 random vocabulary words."""
    vocab = np.array(vocabulary())
    extra = np.random.default_rng(seed).integers(0, len(vocab), size=(len(src), 3))
    return [f"{photo_captions[s]} {' '.join(vocab[e])}" for s, e in zip(src, extra)]


def make_vectors(base: np.ndarray, shared: int, n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) document vectors, photo i % len(base) perturbed inside the [s, g e, -g s] layout; and the photo index."""
    rng = np.random.default_rng(seed)
    src = np.arange(n) % len(base)
    b = base[src]
    dim = base.shape[1]
    if shared > 0:
        s, ge = b[:, :shared], b[:, shared:dim - shared]
        g = np.linalg.norm(ge, axis=1, keepdims=True)  # |g e| = g (e is unit)
        s = s + rng.standard_normal(s.shape, dtype=np.float32) * noise
        s /= np.linalg.norm(s, axis=1, keepdims=True)
        e = np.where(g > 0, ge / np.maximum(g, 1e-12), 0.0).astype(np.float32)
        e = e + rng.standard_normal(e.shape, dtype=np.float32) * noise
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        out = np.concatenate([s, g * e, -g * s], axis=1)
    else:  # no shared space: the aligned vector alone, unit norm
        out = b + rng.standard_normal(b.shape, dtype=np.float32) * noise
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32), src


def build(svc, vectors: np.ndarray, src: np.ndarray, sizes: list[tuple[str, int, int]], captions: list[str]) -> dict:
    """Register N indexed assets in SQL and upsert their points with keyword vectors; seconds of each."""
    from sqlalchemy import insert

    from engine.db import Asset, Collection
    from engine.keywords import document_terms, file_words, keyword_text
    from engine.vectors import point_id

    n = len(vectors)
    _, space, _ = svc.model_row()
    t = time.perf_counter()
    with svc.session() as db:
        coll = Collection(name=COLLECTION, root="/library/photos")
        db.add(coll)
        db.commit()
        cid = coll.id
        for start in range(0, n, SQL_CHUNK):
            rows = []
            for i in range(start, min(start + SQL_CHUNK, n)):
                aid = i + 1
                name, w, h = sizes[src[i]]
                rows.append({"id": aid, "collection_id": cid, "uri": f"/library/photos/{name}-{aid:07d}.jpg",
                             "media": "image", "sha256": f"{aid:064x}", "phash": f"{aid:016x}",
                             "bytes": 40_000 + (aid * 7919) % 200_000, "width": w, "height": h, "format": "JPEG",
                             "mtime": 1.7e9 + aid, "status": "indexed", "near_dup_group": aid, "synthetic": False})
            db.execute(insert(Asset), rows)
        db.commit()
    sql_s = time.perf_counter() - t
    t = time.perf_counter()
    terms_s = 0.0
    for start in range(0, n, UPSERT_CHUNK):
        stop = min(start + UPSERT_CHUNK, n)
        ids, payloads, terms = [], [], []
        for i in range(start, stop):
            aid = i + 1
            name, w, h = sizes[src[i]]
            path = f"/library/photos/{name}-{aid:07d}.jpg"
            words = keyword_text([captions[i], file_words(path)])
            t_terms = time.perf_counter()
            terms.append(document_terms(words))
            terms_s += time.perf_counter() - t_terms
            ids.append(point_id("image", aid))
            payloads.append({"kind": "image", "asset_id": aid, "collection": COLLECTION,
                             "path": path, "format": "JPEG", "width": w,
                             "height": h, "bytes": 40_000 + (aid * 7919) % 200_000, "mtime": 1.7e9 + aid,
                             "synthetic": False, "tags": [], "caption": captions[i], "media": "image",
                             "near_dup_group": aid, "keywords": words})
        svc.store.upsert(space, ids, vectors[start:stop], payloads, keywords=terms)
    return {"sql_insert_s": sql_s, "store_upsert_s": time.perf_counter() - t, "document_terms_s": terms_s,
            "points": svc.store.count(space)}


def pct(xs: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(xs, 50)), "p95_ms": float(np.percentile(xs, 95)),
            "mean_ms": float(np.mean(xs)), "min_ms": float(np.min(xs)), "ms": [round(x, 3) for x in xs]}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part])]


def run_size(n: int, n_queries: int, model, base: np.ndarray, sizes: list, photo_captions: list[str],
             noise: float) -> dict:
    from engine.engine import Engine
    from engine.services import Services
    from engine.settings import load_settings
    from engine.vectors import point_id

    with tempfile.TemporaryDirectory(prefix="bench-query-") as home:
        svc = Services(load_settings(home=Path(home), batch_size=32, model="default", device="cpu",
                                     database_url=None, qdrant_url=None))
        svc._model = model  # loaded once for every size (start-up, not query time)
        vectors, src = make_vectors(base, model.backbone.shared_dim if model.has_shared else 0, n, noise)
        built = build(svc, vectors, src, sizes, captions_for(src, photo_captions))
        print(f"{n:,}: built (SQL {built['sql_insert_s']:.1f} s, store {built['store_upsert_s']:.1f} s)",
              file=sys.stderr, flush=True)
        _, space, _ = svc.model_row()
        engine = Engine(svc)

        # stage timers: wrap the instances Engine.search calls through
        marks: dict[str, float] = {"encode": 0.0, "vector": 0.0, "keyword": 0.0, "retrieve": 0.0, "calls": 0}
        real_encode, real_search = model.encode_texts, svc.store.search
        real_keyword, real_retrieve = svc.store.keyword_search, svc.store.retrieve

        def encode_texts(*a, **kw):
            t = time.perf_counter()
            try:
                return real_encode(*a, **kw)
            finally:
                marks["encode"] += time.perf_counter() - t

        def search(*a, **kw):
            marks["calls"] += 1
            t = time.perf_counter()
            try:
                return real_search(*a, **kw)
            finally:
                marks["vector"] += time.perf_counter() - t

        def timed(name, real):
            def call(*a, **kw):
                t = time.perf_counter()
                try:
                    return real(*a, **kw)
                finally:
                    marks[name] += time.perf_counter() - t
            return call

        model.encode_texts, svc.store.search = encode_texts, search
        svc.store.keyword_search = timed("keyword", real_keyword)
        svc.store.retrieve = timed("retrieve", real_retrieve)
        texts = [QUERIES[i % len(QUERIES)] for i in range(n_queries)]
        stages: dict[str, list[float]] = {"total": [], "encode": [], "vector": [], "keyword": [], "retrieve": [],
                                          "metadata": []}
        store_calls, n_hits, no_match, per_query = [], [], [], {}
        try:
            for text in QUERIES[:WARMUP]:
                engine.search(text=text, collection=COLLECTION, k=K)
            for text in texts:
                for key in marks:
                    marks[key] = 0
                t = time.perf_counter()
                out = engine.search(text=text, collection=COLLECTION, k=K)
                total = time.perf_counter() - t
                store_calls.append(marks["calls"])
                n_hits.append(len(out["hits"]))
                no_match.append(out["no_match"])
                per_query.setdefault(text, {"hits": len(out["hits"]), "no_match": out["no_match"],
                                            "rounds": marks["calls"], "ms": []})["ms"].append(round(total * 1e3, 2))
                stages["total"].append(total * 1e3)
                for name in ("encode", "vector", "keyword", "retrieve"):
                    stages[name].append(marks[name] * 1e3)
                stages["metadata"].append((total - sum(marks[x] for x in ("encode", "vector", "keyword",
                                                                           "retrieve"))) * 1e3)
        finally:
            del model.encode_texts  # back to the class method
            svc.store.search, svc.store.keyword_search, svc.store.retrieve = real_search, real_keyword, real_retrieve

        # Engine.search without the encode, hybrid against vector mode, alternated query by query: the query
        # vectors are computed once and served from a dict, so the comparison is not drowned in encode noise
        cached = {t: v for t, v in zip(QUERIES, real_encode(QUERIES, role="query"))}
        model.encode_texts = lambda texts, role="query", **kw: np.stack([cached[t] for t in texts])
        modes: dict[str, list[float]] = {"hybrid": [], "vector": []}
        try:
            for text in QUERIES[:WARMUP]:
                for mode in modes:
                    engine.search(text=text, collection=COLLECTION, k=K, mode=mode)
            for i, text in enumerate(texts):
                for mode in (("hybrid", "vector") if i % 2 else ("vector", "hybrid")):
                    t = time.perf_counter()
                    engine.search(text=text, collection=COLLECTION, k=K, mode=mode)
                    modes[mode].append((time.perf_counter() - t) * 1e3)
        finally:
            del model.encode_texts

        # the store search alone versus numpy exact, on the same query vectors, alternated
        qv = real_encode(QUERIES, role="query").astype(np.float32)
        flt = {"kind": "image", "synthetic": False, "collection": COLLECTION}
        page = max(3 * K, 50)  # what Engine._ranked asks the store for (first round)
        ids = [point_id("image", i + 1) for i in range(n)]
        edge_ms, numpy_ms, overlap = [], [], []
        for i in range(WARMUP):
            real_search(space, qv[i], k=page, filter=flt)
            top_k(vectors @ qv[i], page)
        for i in range(n_queries):
            q = qv[i % len(qv)]
            t = time.perf_counter()
            hits = real_search(space, q, k=page, filter=flt)
            edge_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            best = top_k(vectors @ q, page)
            numpy_ms.append((time.perf_counter() - t) * 1e3)
            overlap.append(len({h.id for h in hits[:K]} & {ids[j] for j in best[:K]}) / K)
        stats = svc.store._local.stats(space) if getattr(svc.store, "_local", None) is not None else {}
        svc.close()
    return {"n": n, "queries": n_queries, "space": space, "dim": int(vectors.shape[1]), "build": built,
            "store_stats": stats, "store_calls_per_query": float(np.mean(store_calls)),
            "max_store_calls": int(np.max(store_calls)), "hits_per_query": float(np.mean(n_hits)),
            "no_match_share": float(np.mean(no_match)), "per_query": per_query,
            "load_average_at_end": os.getloadavg(),
            "stages": {k: pct(v) for k, v in stages.items()},
            "edge_alone": pct(edge_ms), "numpy_exact": pct(numpy_ms), "overlap10": float(np.mean(overlap)),
            "store_k": page, "search_no_encode": {m: pct(v) for m, v in modes.items()}}


def markdown(runs: list[dict]) -> str:
    lines = ["| items | stage | p50 ms | p95 ms | share of total (mean) |", "|---|---|---|---|---|"]
    for r in runs:
        st = r["stages"]
        tot = st["total"]["mean_ms"]
        for name, label in (("total", "**Engine.search total (hybrid)**"),
                            ("encode", "text encode (encode_texts, query)"),
                            ("vector", f"vector search (store.search, k={r['store_k']}+, filtered)"),
                            ("keyword", f"keyword search (store.keyword_search BM25, k={r['store_k']}+)"),
                            ("retrieve", "keyword-only candidates' vectors (store.retrieve)"),
                            ("metadata", "rest: terms, coverage + fusion, hits, collapse SQL count")):
            s = st[name]
            lines.append(f"| {r['n']:,} | {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | "
                         f"{s['mean_ms'] / tot:.1%} |")
        e, npx = r["edge_alone"], r["numpy_exact"]
        lines.append(f"| {r['n']:,} | Edge search alone vs numpy exact (@ + argpartition) | "
                     f"{e['p50_ms']:.2f} vs {npx['p50_ms']:.2f} | {e['p95_ms']:.2f} vs {npx['p95_ms']:.2f} | "
                     f"Edge/numpy p50 x{e['p50_ms'] / npx['p50_ms']:.1f}; overlap@10 {r['overlap10']:.2f} |")
        h, v = r["search_no_encode"]["hybrid"], r["search_no_encode"]["vector"]
        lines.append(f"| {r['n']:,} | Engine.search without encode: hybrid vs vector mode (alternated) | "
                     f"{h['p50_ms']:.2f} vs {v['p50_ms']:.2f} | {h['p95_ms']:.2f} vs {v['p95_ms']:.2f} | "
                     f"hybrid - vector p50 {h['p50_ms'] - v['p50_ms']:+.2f} ms |")
        lines.append(f"| {r['n']:,} | per query: hits {r['hits_per_query']:.1f} of {K}, no_match "
                     f"{r['no_match_share']:.0%}, store rounds mean {r['store_calls_per_query']:.2f} / max "
                     f"{r['max_store_calls']} | | | load at end "
                     f"{', '.join(f'{x:.2f}' for x in r['load_average_at_end'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--noise", type=float, default=0.03, help="per-dimension noise std before renormalising")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "query.json")
    args = ap.parse_args()
    started = time.perf_counter()
    load_start = os.getloadavg()

    import torch

    from omnibridge import load_model

    model = load_model("default", device="cpu")
    photos = photo_images()
    base = model.encode_images([im for _, im, _ in photos], role="document").astype(np.float32)
    sizes = [(name, im.width, im.height) for name, im, _ in photos]
    photo_captions = [cap for _, _, cap in photos]
    norms = np.linalg.norm(base, axis=1)
    runs = []
    for n in args.sizes:
        runs.append(run_size(n, args.queries, model, base, sizes, photo_captions, args.noise))
        print(f"{n:,} items done after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    table = markdown(runs)
    gen, _ = make_vectors(base, model.backbone.shared_dim if model.has_shared else 0, 1000, args.noise)
    gnorms = np.linalg.norm(gen, axis=1)
    shared = model.backbone.shared_dim if model.has_shared else base.shape[1]
    cos = float(np.mean(np.sum(gen[:, :shared] * base[np.arange(1000) % len(base)][:, :shared], axis=1)))
    vec_note = (f"Vectors: {len(base)} scikit-image photos embedded (role=document, dim {base.shape[1]}), "
                f"perturbed by N(0, {args.noise}^2) per dimension inside the [s, g e, -g s] layout, s and e "
                f"renormalised, the photo's g kept. Real document norms: min {norms.min():.3f} / mean "
                f"{norms.mean():.3f} / max {norms.max():.3f}; generated: min {gnorms.min():.3f} / mean "
                f"{gnorms.mean():.3f} / max {gnorms.max():.3f}; mean cosine of s to its photo {cos:.3f}. "
                "Chosen over random unit vectors so the norms, layout and cluster structure match what ingest writes.")
    print(table)
    print()
    print(vec_note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(), "python": platform.python_version(),
            "qdrant-edge-py": version("qdrant-edge-py"), "numpy": np.__version__, "torch": torch.__version__,
            "seconds": time.perf_counter() - started, "vectors": vec_note, "noise": args.noise,
            "queries_text": QUERIES, "warmup": WARMUP}
    args.out.write_text(json.dumps({"meta": meta, "runs": runs, "markdown": table}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
