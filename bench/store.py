"""Vector store speed: insert rate, query latency (exact, HNSW, filtered) and HNSW recall@10, on random vectors.

    python bench/store.py [--sizes 10000 100000] [--dim 384] [--queries 200] [--ef 256 1024]
                          [--out bench/out/store.json]

Stores, each on the same points and queries in one run:
- `EdgeStore` (embedded Qdrant Edge, the default store): inserted in ingest-sized batches of 256 with the default
  fsync after every batch (a second copy with fsync=False gives the cost of that), searched exactly, then
  `optimize()` builds the HNSW graph and the same queries run on it, with Edge's default beam width (hnsw_ef 100)
  and the wider ones of --ef;
- qdrant-client local mode on disk (`QdrantClient(path=...)` through QdrantServerStore.on_disk, the usual embedded
  choice): pure-Python brute force, so it has no HNSW row, and its query count is capped above 20k points;
- numpy: `vectors @ query` + argpartition, the exact floor (no storage, no payloads).
The filtered query keeps one collection of ten (10% of the points) through the payload filter
{"collection": "c3"} (numpy: a mask on a collection code array). Vectors and queries are random unit vectors
(seed 0); recall@10 is measured against numpy's exact top 10 (of the filtered points for filtered queries).
Latency is per query from Python, warm (3 warm-up queries), p50 / p95 over the queries. Random vectors have no
neighbourhood structure, which makes them the hardest case for a graph index: HNSW recall here is a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from engine.edge_store import EdgeStore  # noqa: E402
from engine.qdrant_store import QdrantServerStore  # noqa: E402
from engine.vectors import point_id  # noqa: E402

K = 10
BATCH = 256  # points per upsert, like an ingest batch
COLLECTIONS = 10
FILTER = {"collection": "c3"}
LOCAL_MAX_QUERIES = 30  # qdrant-client local mode above 20k points: ~0.2 s per query, ~2 s filtered
SPACE = "bench"


def make_data(n: int, dim: int, queries: int) -> dict:
    """Unit vectors (n, dim), their ids and payloads, unit queries (q, dim) and the exact top-K of each."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    codes = np.arange(n) % COLLECTIONS  # collection of each point
    ids = [point_id("image", i) for i in range(n)]
    payloads = [{"collection": f"c{codes[i]}", "kind": "image", "format": "JPEG", "tags": [f"t{i % 7}"],
                 "synthetic": False, "mtime": 1.7e9 + i, "width": 640, "height": 480, "bytes": 50_000 + i,
                 "asset_id": i, "path": f"/library/{i:07d}.jpg"} for i in range(n)]
    scores = q @ vectors.T  # (q, n)
    truth = [[ids[j] for j in top_k(s)] for s in scores]
    keep = np.flatnonzero(codes == int(FILTER["collection"][1:]))
    ftruth = [[ids[keep[j]] for j in top_k(s[keep])] for s in scores]
    return dict(vectors=vectors, queries=q, codes=codes, ids=ids, payloads=payloads, truth=truth, ftruth=ftruth)


def top_k(scores: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the k best scores, best first."""
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part])]


def timed_queries(search: Callable[[np.ndarray], list[str]], queries: np.ndarray
                  ) -> tuple[list[float], list[list[str]]]:
    """Latencies (ms) and results of search(query) -> ids, after 3 warm-up queries."""
    for q in queries[:3]:
        search(q)
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(search(q))
        times.append((time.perf_counter() - t) * 1e3)
    return times, results


def summary(times: list[float], results: list[list[str]], truth: list[list[str]]) -> dict:
    recall = np.mean([len(set(r) & set(t)) / K for r, t in zip(results, truth)])
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "recall10": float(recall), "queries": len(times)}


def insert(store, data: dict) -> float:
    """Upsert every point in batches; points per second."""
    ids, vectors, payloads = data["ids"], data["vectors"], data["payloads"]
    store.ensure_space(SPACE, vectors.shape[1])
    t = time.perf_counter()
    for s in range(0, len(ids), BATCH):
        store.upsert(SPACE, ids[s:s + BATCH], vectors[s:s + BATCH], payloads[s:s + BATCH])
    return len(ids) / (time.perf_counter() - t)


def queries_on(store, data: dict, n_queries: int, exact: bool, filtered: bool) -> dict:
    flt = FILTER if filtered else None
    queries = data["queries"][:n_queries]
    times, results = timed_queries(lambda q: [h.id for h in store.search(SPACE, q, k=K, filter=flt, exact=exact)],
                                   queries)
    return summary(times, results, (data["ftruth"] if filtered else data["truth"])[:n_queries])


def folder_mb(path: Path) -> float:
    """Disk space in use (allocated blocks: Edge preallocates sparse 32 MiB WAL segments)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


def bench_edge(data: dict, n_queries: int, efs: list[int], tmp: Path) -> list[dict]:
    name, root = "EdgeStore (Qdrant Edge)", tmp / "edge"
    store = EdgeStore(root)
    rows = [{"store": name, "mode": f"insert, batches of {BATCH}, fsync each", "insert_per_s": insert(store, data)}]
    rows.append({"store": name, "mode": "exact", **queries_on(store, data, n_queries, exact=True, filtered=False)})
    t = time.perf_counter()
    store.optimize(SPACE)
    build = time.perf_counter() - t
    indexed = store.stats(SPACE)["indexed_vectors"]
    for ef in [None, *efs]:
        store.hnsw_ef = ef
        mode = f"HNSW, ef {ef or 'default (100)'}"
        row = {"store": name, "mode": mode, **queries_on(store, data, n_queries, exact=False, filtered=False)}
        if ef is None:
            row["note"] = (f"optimize() built the graph in {build:.1f} s ({indexed:,} vectors indexed; "
                           "m 16, ef_construct 100)")
        rows.append(row)
    store.hnsw_ef = None
    rows.append({"store": name, "mode": "filtered, HNSW ef default + payload index",
                 **queries_on(store, data, n_queries, exact=False, filtered=True)})
    rows.append({"store": name, "mode": "filtered, exact",
                 **queries_on(store, data, n_queries, exact=True, filtered=True)})
    store.close()
    disk = folder_mb(root)
    t = time.perf_counter()
    reopened = EdgeStore(root)
    assert reopened.count(SPACE) == len(data["ids"])
    rows[0]["note"] = f"{disk:.0f} MB on disk; close + reopen + count {time.perf_counter() - t:.2f} s"
    reopened.close()
    shutil.rmtree(root)

    nosync = EdgeStore(tmp / "edge-nosync", fsync=False)
    rows.insert(1, {"store": name, "mode": f"insert, batches of {BATCH}, fsync=False (WAL only)",
                    "insert_per_s": insert(nosync, data)})
    nosync.close()
    shutil.rmtree(tmp / "edge-nosync")
    return rows


def bench_local(data: dict, n_queries: int, tmp: Path) -> list[dict]:
    name, n = "qdrant-client local mode (path=)", len(data["ids"])
    capped = n_queries if n <= 20_000 else min(n_queries, LOCAL_MAX_QUERIES)
    store = QdrantServerStore.on_disk(tmp / "local")
    rows = [{"store": name, "mode": f"insert, batches of {BATCH}", "insert_per_s": insert(store, data)}]
    rows.append({"store": name, "mode": "exact (no HNSW in local mode)",
                 **queries_on(store, data, capped, exact=True, filtered=False)})
    rows.append({"store": name, "mode": "filtered, exact",
                 **queries_on(store, data, capped, exact=True, filtered=True)})
    store.close()
    rows[0]["note"] = f"{folder_mb(tmp / 'local'):.0f} MB on disk"
    shutil.rmtree(tmp / "local")
    return rows


def bench_numpy(data: dict, n_queries: int) -> list[dict]:
    name, vectors, codes, ids = "numpy (exact floor)", data["vectors"], data["codes"], data["ids"]
    queries = data["queries"][:n_queries]
    times, results = timed_queries(lambda q: [ids[j] for j in top_k(vectors @ q)], queries)
    wanted = int(FILTER["collection"][1:])

    def filtered(q: np.ndarray) -> list[str]:
        keep = np.flatnonzero(codes == wanted)
        return [ids[keep[j]] for j in top_k(vectors[keep] @ q)]

    ftimes, fresults = timed_queries(filtered, queries)
    return [{"store": name, "mode": "exact: matrix @ query + argpartition",
             **summary(times, results, data["truth"][:n_queries])},
            {"store": name, "mode": "filtered: mask, gather, matmul",
             **summary(ftimes, fresults, data["ftruth"][:n_queries])}]


# -- report ----------------------------------------------------------------------------------------------------

def markdown(runs: list[dict]) -> str:
    lines = ["| points | store | what | insert (points/s) | p50 ms | p95 ms | recall@10 | queries | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["rows"]:
            timing = (f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['recall10']:.3f} | {r['queries']}"
                      if "p50_ms" in r else "- | - | - | -")
            rate = f"{r['insert_per_s']:,.0f}" if "insert_per_s" in r else "-"
            lines.append(f"| {run['n']:,} | {r['store']} | {r['mode']} | {rate} | {timing} | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", type=int, nargs="*", default=[256, 1024], help="HNSW beam widths to try beside the default")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "store.json")
    args = ap.parse_args()
    started = time.perf_counter()
    runs = []
    for n in args.sizes:
        data = make_data(n, args.dim, args.queries)
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            rows = [*bench_edge(data, args.queries, args.ef, Path(tmp)), *bench_local(data, args.queries, Path(tmp)),
                    *bench_numpy(data, args.queries)]
        runs.append({"n": n, "dim": args.dim, "queries": args.queries, "rows": rows})
        print(f"{n:,} points done after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    table = markdown(runs)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpus": os.cpu_count(),
            "load_average_1_5_15_min_at_end": os.getloadavg(),
            "python": platform.python_version(), "qdrant-edge-py": version("qdrant-edge-py"),
            "qdrant-client": version("qdrant-client"), "numpy": np.__version__,
            "seconds": time.perf_counter() - started}
    args.out.write_text(json.dumps({"meta": meta, "runs": runs, "markdown": table}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
