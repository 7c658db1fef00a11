"""The VectorStore on a Qdrant server through `qdrant-client`: one collection per space, named "<prefix>-<space>".

Each collection holds one dense vector named after the space, Dot distance, and the sparse vector KEYWORDS with
the IDF modifier (BM25), with a payload index for every field of INDEXED_FIELDS; the server builds its HNSW graph by itself, so `optimize` has nothing to do. `exact` goes to the
server as SearchParams(exact=True).

`url=":memory:"` runs qdrant-client's local mode in this process instead (`QdrantServerStore.on_disk(path)` the
same on a folder): pure-Python brute force, so every search is exact, payload indexes do not exist there and are
not requested. It serves the tests and the benchmark of the server code path, not users.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from .vectors import (
    INDEXED_FIELDS, KEYWORDS, Condition, Hit, Sparse, SpaceNotFound, check_ids, check_keywords, check_points,
    check_query, check_space, check_sparse_query, dim_mismatch, in_order, parse_filter,
)

UPSERT_BATCH = 256  # points per request: a 1024-d batch is ~2 MB of JSON, far below the server's 32 MB limit
TIMEOUT = 60  # seconds per request
SCHEMA = {"keyword": models.PayloadSchemaType.KEYWORD, "bool": models.PayloadSchemaType.BOOL,
          "integer": models.PayloadSchemaType.INTEGER, "float": models.PayloadSchemaType.FLOAT}
T = TypeVar("T")


class QdrantUnavailable(RuntimeError):
    """The Qdrant server cannot be reached or refused us; the message names the URL and what to do."""


class QdrantServerStore:
    """VectorStore (see engine.vectors) on the Qdrant server at `url` (or ":memory:"), collections "<prefix>-<space>".

    The constructor checks the connection, so a wrong URL fails at once with QdrantUnavailable.
    """

    def __init__(self, url: str, api_key: str | None = None, prefix: str = "omnibridge",
                 shards: int | None = None, replicas: int | None = None):
        """shards / replicas: shard_number and replication_factor of the collections this store creates (a
        Qdrant cluster spreads shards over its nodes and keeps `replicas` copies of each); None = server default."""
        self.shards, self.replicas = shards, replicas
        if url == ":memory:":
            client, local = QdrantClient(":memory:"), True
        else:
            client = QdrantClient(url=url, api_key=api_key, timeout=TIMEOUT, check_compatibility=False)
            local = False
        self._setup(client, url, prefix, local)

    @classmethod
    def on_disk(cls, path: Path, prefix: str = "omnibridge") -> QdrantServerStore:
        """qdrant-client's local mode on a folder (one process at a time; exact search only): for benchmarks."""
        store = cls.__new__(cls)
        store.shards = store.replicas = None
        store._setup(QdrantClient(path=str(path)), str(path), prefix, local=True)
        return store

    def _setup(self, client: QdrantClient, url: str, prefix: str, local: bool) -> None:
        self.client = client
        self.url = url
        self.prefix = check_space(prefix)
        self.local = local  # qdrant-client local mode: no payload indexes, no search params
        self._dims: dict[str, int] = {}  # space -> dim of the collections seen so far
        self._keyword_spaces: set[str] = set()  # spaces seen so far that have the KEYWORDS sparse vector
        self._call(self.client.get_collections)  # fail now, not at the first search

    # -- the protocol ----------------------------------------------------------------------------------------

    def ensure_space(self, space: str, dim: int) -> None:
        check_space(space)
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"ensure_space({space!r}, dim={dim!r}): dim must be a positive integer")
        name = self.collection(space)
        if not self._call(self.client.collection_exists, name):
            try:
                self._call(self.client.create_collection, name, vectors_config={
                    space: models.VectorParams(size=int(dim), distance=models.Distance.DOT)},
                    sparse_vectors_config={KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                    shard_number=self.shards, replication_factor=self.replicas)
            except UnexpectedResponse as e:
                if e.status_code != 409:  # 409: another process created it just now; checked below
                    raise
        stored = self._dim(space)
        if stored != dim:
            raise dim_mismatch(space, stored, int(dim))
        self._add_indexes(space)

    def spaces(self) -> list[str]:
        start = f"{self.prefix}-"
        names = [c.name for c in self._call(self.client.get_collections).collections]
        return sorted(n[len(start):] for n in names if n.startswith(start))

    def upsert(self, space: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               keywords: Sequence[Sparse | None] | None = None) -> None:
        ids, vectors, payloads = check_points(ids, vectors, payloads, self._dim(space))
        keywords = check_keywords(keywords, len(ids)) if space in self._keyword_spaces else [None] * len(ids)
        for start in range(0, len(ids), UPSERT_BATCH):
            rows = slice(start, start + UPSERT_BATCH)
            points = [models.PointStruct(id=i, vector=_vectors(space, v, kw), payload=p)
                      for i, v, kw, p in zip(ids[rows], vectors[rows], keywords[rows], payloads[rows])]
            self._call(self.client.upsert, self.collection(space), points, wait=True)

    def delete(self, space: str, ids: Sequence[str]) -> None:
        self._dim(space)
        ids = check_ids(ids)
        if ids:
            self._call(self.client.delete, self.collection(space), models.PointIdsList(points=ids), wait=True)

    def set_payload(self, space: str, ids: Sequence[str], payload: dict) -> None:
        """Merge `payload` into the points that exist (selected by filter, so a missing id is no error)."""
        self._dim(space)
        ids = check_ids(ids)
        if not isinstance(payload, dict):
            raise ValueError(f"set_payload needs a dict of field -> value, not {type(payload).__name__}")
        if ids and payload:
            selector = models.Filter(must=[models.HasIdCondition(has_id=ids)])
            self._call(self.client.set_payload, self.collection(space), payload, points=selector, wait=True)

    def search(self, space: str, vector: np.ndarray, k: int = 10, filter: dict | None = None,
               offset: int = 0, exact: bool = False) -> list[Hit]:
        vector = check_query(vector, self._dim(space), k, offset)  # (dim,) float32
        params = None if self.local else models.SearchParams(exact=bool(exact))  # local mode is always exact
        response = self._call(self.client.query_points, self.collection(space), query=vector.tolist(), using=space,
                              query_filter=qdrant_filter(parse_filter(filter)), search_params=params,
                              limit=int(k), offset=int(offset), with_payload=True, with_vectors=False)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def keyword_search(self, space: str, query: Sparse, k: int = 10, filter: dict | None = None,
                       offset: int = 0) -> list[Hit] | None:
        self._dim(space)
        query = check_sparse_query(query, k, offset)
        if space not in self._keyword_spaces:
            return None
        if not query:
            return []
        response = self._call(self.client.query_points, self.collection(space),
                              query=models.SparseVector(indices=list(query.indices), values=list(query.values)),
                              using=KEYWORDS, query_filter=qdrant_filter(parse_filter(filter)), limit=int(k),
                              offset=int(offset), with_payload=True, with_vectors=False)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def count(self, space: str, filter: dict | None = None) -> int:
        self._dim(space)
        flt = qdrant_filter(parse_filter(filter))
        return self._call(self.client.count, self.collection(space), count_filter=flt, exact=True).count

    def retrieve(self, space: str, ids: Sequence[str], with_vectors: bool = False
                 ) -> list[tuple[str, dict, np.ndarray | None]]:
        self._dim(space)
        ids = check_ids(ids)
        if not ids:
            return []
        found = self._call(self.client.retrieve, self.collection(space), ids, with_payload=True,
                           with_vectors=bool(with_vectors))
        return in_order(ids, found, space, with_vectors)

    def point_ids(self, space: str) -> list[str]:
        """Every point id of the space (a scroll; for consistency checks, not for queries)."""
        self._dim(space)
        out, offset = [], None
        while True:
            records, offset = self._call(self.client.scroll, self.collection(space), offset=offset, limit=4096,
                                         with_payload=False, with_vectors=False)
            out += [str(r.id) for r in records]
            if offset is None or not records:
                return out

    def optimize(self, space: str) -> None:
        """Nothing to do: the server indexes by itself (and local mode has no index)."""
        self._dim(space)

    def close(self) -> None:
        self.client.close()

    # -- helpers ---------------------------------------------------------------------------------------------

    def collection(self, space: str) -> str:
        """The collection name of a space."""
        return f"{self.prefix}-{check_space(space)}"

    def _dim(self, space: str) -> int:
        """The dim of an existing space (SpaceNotFound if there is none)."""
        if space not in self._dims:
            name = self.collection(space)
            if not self._call(self.client.collection_exists, name):
                held = ", ".join(self.spaces()) or "none"
                raise SpaceNotFound(f"no space {space!r} (collection {name!r}) at {self.url} (it holds: {held}); "
                                    f"create it with ensure_space({space!r}, dim)")
            params = self._call(self.client.get_collection, name).config.params
            vectors = params.vectors
            if KEYWORDS in (params.sparse_vectors or {}):
                self._keyword_spaces.add(space)
            if not isinstance(vectors, dict) or space not in vectors:
                raise RuntimeError(f"collection {name!r} at {self.url} has no vector named {space!r}, so it was not "
                                   "made by this store; delete or rename it, or change OMNIBRIDGE_QDRANT_PREFIX")
            self._dims[space] = vectors[space].size
        return self._dims[space]

    def _add_indexes(self, space: str) -> None:
        """Create the payload indexes the collection lacks (the server skips the work for existing ones)."""
        if self.local:
            return
        name = self.collection(space)
        have = self._call(self.client.get_collection, name).payload_schema or {}
        for field, kind in INDEXED_FIELDS.items():
            if field not in have:
                self._call(self.client.create_payload_index, name, field, field_schema=SCHEMA[kind], wait=True)

    def _call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Call the client, turning connection and authorization failures into QdrantUnavailable."""
        try:
            return fn(*args, **kwargs)
        except ResponseHandlingException as e:
            raise QdrantUnavailable(f"cannot reach the Qdrant server at {self.url} ({e.source!r}): start Qdrant "
                                    "there (docker run -p 6333:6333 qdrant/qdrant) or unset OMNIBRIDGE_QDRANT_URL "
                                    "to use the embedded store") from e
        except UnexpectedResponse as e:
            if e.status_code in (401, 403):
                raise QdrantUnavailable(f"the Qdrant server at {self.url} refused the request ({e.status_code}): "
                                        "set OMNIBRIDGE_QDRANT_API_KEY to its API key") from e
            raise


def _vectors(space: str, vector: np.ndarray, keywords: Sparse | None) -> dict:
    out: dict = {space: vector.tolist()}
    if keywords:
        out[KEYWORDS] = models.SparseVector(indices=list(keywords.indices), values=list(keywords.values))
    return out


# -- filters ---------------------------------------------------------------------------------------------------

def qdrant_filter(conditions: list[Condition]) -> models.Filter | None:
    """Checked filter clauses (engine.vectors.parse_filter) as a qdrant-client Filter whose clauses must all match."""
    return models.Filter(must=[_field_condition(c) for c in conditions]) if conditions else None


def _field_condition(c: Condition) -> models.FieldCondition:
    if c.op == "range":
        return models.FieldCondition(key=c.field, range=models.Range(**c.value))
    if c.op == "any":
        return models.FieldCondition(key=c.field, match=models.MatchAny(any=list(c.value)))
    return models.FieldCondition(key=c.field, match=models.MatchValue(value=c.value))
