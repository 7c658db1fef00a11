"""The VectorStore on embedded Qdrant Edge (`qdrant-edge-py`): one shard folder per space under a root folder.

Layout: ROOT/<space>/ is an Edge shard (edge_config.json, wal/, segments/) holding one dense vector named <space>,
Dot distance, the sparse vector KEYWORDS with the IDF modifier (BM25; shards made before it existed are opened
without it and have no keyword search), and a payload index for every field of INDEXED_FIELDS. Anything else in ROOT (the owner.lock and
owner.json of engine.shared_store) is not a space.

Durability: `EdgeShard.update` appends the operation to the shard's write-ahead log before it returns. The WAL is
a memory-mapped file, so from then on the operation is in the OS page cache and a SIGKILL of this process loses
nothing: the next `EdgeShard.load` replays the WAL. `flush()` also fsyncs the WAL and the segments, which is what
survives an OS crash or a power cut. With `fsync=True` (the default) every write is flushed before it returns
(5-10 ms per call on this machine), so SQL rows marked indexed never point at vectors a power cut could lose.

Locking: a shard folder has one owner. A second `EdgeShard.load` of an open folder, in this process or another,
fails with "failed to open WAL <folder>/wal: Can't init WAL: Kind(WouldBlock)": an OS file lock, released by
`close()` or when the process dies (SIGKILL included). It is raised here as `ShardLocked`; engine.shared_store
lets several processes share one owner.

Quirk of qdrant-edge-py 0.9.0: `MatchValue(True)` is read as the integer 1 (its value type tries int before bool)
and then matches no bool payload; a numpy bool is read as a bool, so bool filters are built with np.bool_.
"""

from __future__ import annotations

import json
import numbers
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
from qdrant_edge import (
    CountRequest, Distance, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParams,
    FieldCondition, Filter, HasIdCondition, HnswIndexConfig, MatchAny, MatchValue, Modifier, PayloadSchemaType, Point,
    Query, QueryRequest, RangeFloat, ScrollRequest, SearchParams, SparseVector, UpdateOperation,
)

from .vectors import (
    INDEXED_FIELDS, KEYWORDS, Condition, Hit, Sparse, SpaceNotFound, StoreDamaged, check_ids, check_keywords,
    check_points, check_query, check_space, check_sparse_query, dim_mismatch, in_order, parse_filter,
)

CONFIG_FILE = "edge_config.json"  # written by Edge into every shard folder; its presence makes a folder a space
HNSW_M = 16  # graph edges per node (Qdrant's default)
HNSW_EF_CONSTRUCT = 100  # candidates kept while building the graph (Qdrant's default)
FULL_SCAN_KB = 10_000  # filtered searches matching fewer vectors than this (KB) scan them instead of the graph
UPSERT_BATCH = 1024  # points per update operation: one WAL record stays far below the 32 MiB WAL segment
SCHEMA = {"keyword": PayloadSchemaType.Keyword, "bool": PayloadSchemaType.Bool,
          "integer": PayloadSchemaType.Integer, "float": PayloadSchemaType.Float}


class ShardLocked(RuntimeError):
    """The space's shard folder is open elsewhere (another process, or another EdgeStore in this one)."""


class EdgeStore:
    """VectorStore (see engine.vectors) on Qdrant Edge shards under `root`, opened on first use of each space.

    fsync: flush (fsync) after every write so it survives an OS crash, not only a killed process (see above).
    indexing_threshold_kb: `optimize` builds an HNSW graph for segments holding more vector data than this;
    smaller spaces are searched exactly, which is faster at that size (10 MB = about 6.5k 384-d vectors).
    hnsw_ef: beam width of approximate searches (more = better recall, slower); None = Edge's default, which is
    ef_construct (100). See bench/STORE_RESULTS.md for what it buys on 384-d vectors.
    """

    def __init__(self, root: Path, *, fsync: bool = True, indexing_threshold_kb: int = 10_000,
                 hnsw_ef: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.indexing_threshold_kb = indexing_threshold_kb
        self.hnsw_ef = hnsw_ef
        self._shards: dict[str, tuple[EdgeShard, int]] = {}  # space -> (open shard, dim)
        self._keywords: dict[str, bool] = {}  # space -> whether its shard has the KEYWORDS sparse vector
        self._lock = threading.RLock()  # guards opening and closing shards
        self._closed = False

    # -- the protocol ----------------------------------------------------------------------------------------

    def ensure_space(self, space: str, dim: int) -> None:
        check_space(space)
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"ensure_space({space!r}, dim={dim!r}): dim must be a positive integer")
        with self._lock:
            self._check_open()
            if not self._exists(space):
                self._create(space, int(dim))
                return
            stored = self._stored_dim(space)
            if stored != dim:
                raise dim_mismatch(space, stored, int(dim))
            self._shard(space)  # open it now (adds any payload index a newer INDEXED_FIELDS has)

    def spaces(self) -> list[str]:
        self._check_open()
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file())

    def upsert(self, space: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               keywords: Sequence[Sparse | None] | None = None) -> None:
        shard, dim = self._shard(space)
        ids, vectors, payloads = check_points(ids, vectors, payloads, dim)
        keywords = check_keywords(keywords, len(ids)) if self._has_keywords(space) else [None] * len(ids)
        for start in range(0, len(ids), UPSERT_BATCH):
            rows = slice(start, start + UPSERT_BATCH)
            points = [Point(i, _vectors(space, v, kw), p)
                      for i, v, kw, p in zip(ids[rows], vectors[rows], keywords[rows], payloads[rows])]
            shard.update(UpdateOperation.upsert_points(points))
        if ids:
            self._sync(shard)

    def delete(self, space: str, ids: Sequence[str]) -> None:
        shard, _ = self._shard(space)
        ids = check_ids(ids)
        if ids:
            shard.update(UpdateOperation.delete_points(ids))
            self._sync(shard)

    def set_payload(self, space: str, ids: Sequence[str], payload: dict) -> None:
        """Merge `payload` into the points that exist (by filter: Edge's by-id form fails on a missing id)."""
        shard, _ = self._shard(space)
        ids = check_ids(ids)
        if not isinstance(payload, dict):
            raise ValueError(f"set_payload needs a dict of field -> value, not {type(payload).__name__}")
        if ids and payload:
            shard.update(UpdateOperation.set_payload_by_filter(Filter(must=[HasIdCondition(set(ids))]), payload))
            self._sync(shard)

    def search(self, space: str, vector: np.ndarray, k: int = 10, filter: dict | None = None,
               offset: int = 0, exact: bool = False) -> list[Hit]:
        shard, dim = self._shard(space)
        vector = check_query(vector, dim, k, offset)  # (dim,) float32
        request = QueryRequest(limit=int(k), offset=int(offset), query=Query.Nearest(vector, using=space),
                               filter=edge_filter(parse_filter(filter)), with_payload=True, with_vector=False,
                               params=SearchParams(exact=bool(exact), hnsw_ef=self.hnsw_ef))
        with _damage_guard(self.root, space):
            return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in shard.query(request)]

    def keyword_search(self, space: str, query: Sparse, k: int = 10, filter: dict | None = None,
                       offset: int = 0) -> list[Hit] | None:
        shard, _ = self._shard(space)
        query = check_sparse_query(query, k, offset)
        if not self._has_keywords(space):
            return None
        if not query:
            return []
        request = QueryRequest(limit=int(k), offset=int(offset),
                               query=Query.Nearest(SparseVector(list(query.indices), list(query.values)),
                                                   using=KEYWORDS),
                               filter=edge_filter(parse_filter(filter)), with_payload=True, with_vector=False)
        with _damage_guard(self.root, space):
            return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in shard.query(request)]

    def count(self, space: str, filter: dict | None = None) -> int:
        shard, _ = self._shard(space)
        with _damage_guard(self.root, space):
            return shard.count(CountRequest(exact=True, filter=edge_filter(parse_filter(filter))))

    def retrieve(self, space: str, ids: Sequence[str], with_vectors: bool = False
                 ) -> list[tuple[str, dict, np.ndarray | None]]:
        shard, _ = self._shard(space)
        ids = check_ids(ids)
        if not ids:
            return []
        with _damage_guard(self.root, space):
            records = shard.retrieve(ids, with_payload=True, with_vector=bool(with_vectors))
        return in_order(ids, records, space, with_vectors)

    def point_ids(self, space: str) -> list[str]:
        """Every point id of the space (a scroll; for consistency checks, not for queries)."""
        shard, _ = self._shard(space)
        out, offset = [], None
        while True:
            with _damage_guard(self.root, space):
                records, offset = shard.scroll(ScrollRequest(offset=offset, limit=4096, with_payload=False,
                                                             with_vector=False))
            out += [str(r.id) for r in records]
            if offset is None or not records:
                return out

    def optimize(self, space: str) -> None:
        """Run Edge's optimizers until done: segments above indexing_threshold_kb get their HNSW graph."""
        shard, _ = self._shard(space)
        shard.optimize()
        shard.flush()

    def close(self) -> None:
        """Flush and close every open shard (unlocking its folder); the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            shards, self._shards = self._shards, {}
            error: Exception | None = None
            for shard, _ in shards.values():  # close them all even if one flush fails
                try:
                    shard.flush()
                except Exception as e:
                    error = error or e
                shard.close()
            if error is not None:
                raise RuntimeError(f"flushing the vector store at {self.root} on close failed: {error}") from error

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- beyond the protocol ---------------------------------------------------------------------------------

    def stats(self, space: str) -> dict[str, int]:
        """{"points", "indexed_vectors" (in an HNSW graph), "segments"} of a space."""
        info = self._shard(space)[0].info()
        return {"points": info.points_count, "indexed_vectors": info.indexed_vectors_count,
                "segments": info.segments_count}

    # -- shards ----------------------------------------------------------------------------------------------

    def _config(self, space: str, dim: int, keywords: bool = True) -> EdgeConfig:
        return EdgeConfig(
            vectors={space: EdgeVectorParams(size=dim, distance=Distance.Dot)},
            sparse_vectors={KEYWORDS: EdgeSparseVectorParams(modifier=Modifier.Idf)} if keywords else None,
            hnsw_config=HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB),
            optimizers=EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb),
        )

    def _has_keywords(self, space: str) -> bool:
        """Whether the space's shard has the KEYWORDS sparse vector (shards made before it existed do not)."""
        if space not in self._keywords:
            path = self.root / space / CONFIG_FILE
            try:
                self._keywords[space] = KEYWORDS in (json.loads(path.read_text()).get("sparse_vectors") or {})
            except (OSError, ValueError):
                return False
        return self._keywords[space]

    def _exists(self, space: str) -> bool:
        return (self.root / space / CONFIG_FILE).is_file()

    def _stored_dim(self, space: str) -> int:
        path = self.root / space / CONFIG_FILE
        try:
            return int(json.loads(path.read_text())["vectors"][space]["size"])
        except (KeyError, TypeError, ValueError) as e:
            raise RuntimeError(f"{path.parent} is not a space made by EdgeStore (no {space!r} vector in {path}: "
                               f"{e!r}); move that folder out of {self.root}") from None

    def _create(self, space: str, dim: int) -> None:
        path = self.root / space
        try:
            shard = EdgeShard.create(str(path), self._config(space, dim))
        except BaseException as e:  # qdrant_edge raises plain Exception, or a Rust panic (a BaseException)
            if not _is_panic(e) and not isinstance(e, Exception):
                raise
            raise _open_error(e, space, path) from e
        self._shards[space] = (shard, dim)
        self._add_indexes(shard)

    def _shard(self, space: str) -> tuple[EdgeShard, int]:
        """The open shard of a space and its dim, loading it on first use."""
        with self._lock:
            self._check_open()
            if space in self._shards:
                return self._shards[space]
            check_space(space)
            if not self._exists(space):
                held = ", ".join(self.spaces()) or "none"
                raise SpaceNotFound(f"no space {space!r} in {self.root} (it holds: {held}); "
                                    f"create it with ensure_space({space!r}, dim)")
            dim = self._stored_dim(space)
            path = self.root / space
            try:
                shard = EdgeShard.load(str(path), self._config(space, dim, self._has_keywords(space)))
            except BaseException as e:  # damaged segments can make the Rust code panic (a BaseException)
                if not _is_panic(e) and not isinstance(e, Exception):
                    raise
                raise _open_error(e, space, path) from e
            self._shards[space] = (shard, dim)
            self._add_indexes(shard)
            return shard, dim

    def _add_indexes(self, shard: EdgeShard) -> None:
        """Create the payload indexes the shard lacks (all of them for a new shard)."""
        have = shard.info().payload_schema
        missing = [name for name in INDEXED_FIELDS if name not in have]
        for name in missing:
            shard.update(UpdateOperation.create_field_index(name, SCHEMA[INDEXED_FIELDS[name]]))
        if missing:
            shard.flush()

    def _sync(self, shard: EdgeShard) -> None:
        if self.fsync:
            shard.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this EdgeStore on {self.root} was closed; open a new EdgeStore({str(self.root)!r})")


def _is_panic(e: BaseException) -> bool:
    """A Rust panic inside qdrant-edge (pyo3's PanicException derives from BaseException, not Exception)."""
    return type(e).__name__ == "PanicException"


@contextmanager
def _damage_guard(root: Path, space: str):
    """A panic while reading a shard means its files are damaged: StoreDamaged with the fix, not a crash."""
    try:
        yield
    except BaseException as e:
        if not _is_panic(e):
            raise
        raise StoreDamaged(f"reading the vector space {space!r} under {root} failed ({str(e).splitlines()[0][:200]}): "
                           "its files are damaged; run `omnibridge doctor --repair`") from None


def _open_error(e: BaseException, space: str, path: Path) -> Exception:
    if "WouldBlock" in str(e):
        return ShardLocked(f"the vector space {space!r} ({path}) is open in another process or another EdgeStore: "
                           "Qdrant Edge allows one owner per folder. Close the other one, or reach it through "
                           "engine.shared_store.SharedStore, which shares one owner between processes")
    return StoreDamaged(f"the vector space {space!r} at {path} cannot be opened ({str(e).splitlines()[0][:300]}): its "
                        "files are damaged or missing; run `omnibridge doctor --repair` to rebuild it from the "
                        "database and the files")


def _vectors(space: str, vector: np.ndarray, keywords: Sparse | None) -> dict:
    out: dict = {space: vector}
    if keywords:
        out[KEYWORDS] = SparseVector(list(keywords.indices), list(keywords.values))
    return out


# -- filters ---------------------------------------------------------------------------------------------------

def edge_filter(conditions: list[Condition]) -> Filter | None:
    """Checked filter clauses (engine.vectors.parse_filter) as an Edge Filter whose clauses must all match."""
    return Filter(must=[_field_condition(c) for c in conditions]) if conditions else None


def _field_condition(c: Condition) -> FieldCondition:
    if c.op == "range":
        return FieldCondition(key=c.field, range=RangeFloat(**c.value))  # RangeFloat also serves integer fields
    if c.op == "any":
        return FieldCondition(key=c.field, match=MatchAny(list(c.value)))
    value = np.bool_(c.value) if isinstance(c.value, bool) else c.value  # see the quirk in the module doc
    return FieldCondition(key=c.field, match=MatchValue(value))
