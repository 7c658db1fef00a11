"""The one vector-store contract, and the stores behind it: embedded Qdrant Edge and a Qdrant server.

A store holds one *space* per model (`space` = the model's vector name, e.g. "default-3f2a9c1b"): its own Qdrant
collection (server) or shard directory (Edge) with one dense named vector of that name, Dot distance (our vectors
are built so that the dot product is the blended similarity; see omnibridge.retrieval), and the same point ids and
payloads in every space. A new model is indexed into a new space beside the old one; switching is a settings change.

Each space also holds a sparse vector named KEYWORDS: the BM25 term weights of a point's words (captions, tags,
OCR text, file name; see engine.keywords), scored with the store's IDF modifier, so `keyword_search` ranks points by
BM25 under the same filters as `search`. A space created before keywords existed has none (`keyword_search` then
returns None) and keeps working for vector search.

Point ids are UUID strings (see `point_id`). Payload fields with an index: collection, kind ('image'|'text'),
format, tags (list), synthetic (bool), mtime (float, unix seconds), width, height, bytes (ints), asset_id (int).
Filters are plain dicts: {"collection": "x", "tags": ["a", "b"] (any of), "synthetic": False,
"mtime": {"gte": t0, "lt": t1}, ...}: a list means "any of", a dict with gt/gte/lt/lte a range, a scalar equality.
"""

from __future__ import annotations

import math
import numbers
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

import numpy as np

INDEXED_FIELDS = {
    "collection": "keyword", "kind": "keyword", "format": "keyword", "tags": "keyword", "synthetic": "bool",
    "mtime": "float", "width": "integer", "height": "integer", "bytes": "integer", "asset_id": "integer",
}
KEYWORDS = "keywords"  # the sparse (BM25) vector of every space
_NAMESPACE = uuid.UUID("6f1b7a52-3c1e-4f0e-9a65-0b1d5e7c2a10")


def point_id(kind: str, row_id: int) -> str:
    """Stable point id of an SQL row: the same asset or text always maps to the same point (upserts are idempotent)."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{row_id}"))


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: term ids (sorted, unique) and their weights (BM25 term weights for documents, 1s for
    queries). Plain lists, so it pickles across engine.shared_store."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.indices)


class StoreDamaged(RuntimeError):
    """The vector store's files cannot be read, or give impossible results; the message names the folder and says
    to run `omnibridge doctor --repair` (SQL and the files are the source of truth: the index can be rebuilt)."""


class SpaceNotFound(ValueError):
    """A call named a space that the store does not hold; the message lists the spaces it does hold."""


class VectorStore(Protocol):
    """One space per model; every method takes the space first. Implementations: `engine.edge_store.EdgeStore`
    (embedded, one shard folder per space) and `engine.qdrant_store.QdrantServerStore` (one collection per space).
    Bad input (a malformed filter, a wrong vector shape, an unknown space) raises ValueError naming the fix."""

    def ensure_space(self, space: str, dim: int) -> None:
        """Create the space if missing (with the payload indexes); a dim mismatch with an existing space raises."""

    def spaces(self) -> list[str]:
        """The spaces that exist, sorted."""

    def upsert(self, space: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               keywords: Sequence[Sparse | None] | None = None) -> None:
        """vectors (N, dim) float32; keywords: one Sparse (or None: no words) per point, or None for none at all.
        Re-upserting an id replaces its vectors and payload."""

    def delete(self, space: str, ids: Sequence[str]) -> None:
        """Remove the points; ids that are not there are ignored."""

    def set_payload(self, space: str, ids: Sequence[str], payload: dict) -> None:
        """Merge `payload` into the points' payloads."""

    def search(self, space: str, vector: np.ndarray, k: int = 10, filter: dict | None = None,
               offset: int = 0, exact: bool = False) -> list[Hit]:
        """The k best points after skipping `offset`, best first by dot product; `filter` as in the module doc.
        `exact=True` scans every vector instead of walking the HNSW graph (the ground truth for recall)."""

    def keyword_search(self, space: str, query: Sparse, k: int = 10, filter: dict | None = None,
                       offset: int = 0) -> list[Hit] | None:
        """The k points with the highest BM25 score for the query's terms (only points sharing a term), best
        first; None when the space has no keyword index (made before keywords existed)."""

    def count(self, space: str, filter: dict | None = None) -> int:
        """Exact number of points matching the filter (all points without one)."""

    def retrieve(self, space: str, ids: Sequence[str], with_vectors: bool = False) -> list[tuple[str, dict, np.ndarray | None]]:
        """(id, payload, vector (dim,) float32 or None) of the points that exist, in the order of `ids`."""

    def point_ids(self, space: str) -> list[str]:
        """Every point id of the space (a full scroll: for consistency checks such as `omnibridge doctor`)."""

    def optimize(self, space: str) -> None:
        """Build the HNSW index now (Edge builds lazily); a no-op where the server does it itself."""

    def close(self) -> None:
        """Release the store (Edge: flush and unlock the shard folders so another process can open them)."""


# -- checks shared by the stores -------------------------------------------------------------------------------

RANGE_KEYS = ("gt", "gte", "lt", "lte")
_SPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Condition:
    """One checked filter clause. op "eq": value is a scalar; "any": a tuple of scalars; "range": a dict of
    RANGE_KEYS -> float. Equality on a float field is turned into the range [v, v]."""

    field: str
    op: Literal["eq", "any", "range"]
    value: Any


def parse_filter(filter: dict | None) -> list[Condition]:
    """Check a filter dict (see the module doc) and return its clauses, all of which must match.

    Raises ValueError naming the field and what it accepts: an unknown field, a value of the wrong type, an empty
    list, a list on a bool or float field, a range on a keyword or bool field, a range with other keys than
    gt/gte/lt/lte.
    """
    if filter is None:
        return []
    if not isinstance(filter, dict):
        raise ValueError(f"a filter is a dict of field -> value, not {type(filter).__name__}; "
                         f"e.g. {{'collection': 'photos', 'synthetic': False}}")
    return [_condition(name, value) for name, value in filter.items()]


def _condition(name: str, value: Any) -> Condition:
    kind = INDEXED_FIELDS.get(name)
    if kind is None:
        raise ValueError(f"cannot filter on {name!r}: filterable fields are {', '.join(INDEXED_FIELDS)}")
    if isinstance(value, (list, tuple, set)):
        if kind in ("bool", "float"):
            fix = "True or False" if kind == "bool" else "a range {'gte': a, 'lt': b}"
            raise ValueError(f"filter {name!r}: a list (any of) is not supported on a {kind} field; use {fix}")
        if not value:
            raise ValueError(f"filter {name!r}: the list (any of) is empty and would match nothing; "
                             "leave the field out to not filter on it")
        return Condition(name, "any", tuple(_scalar(name, kind, v) for v in value))
    if isinstance(value, dict):
        if kind not in ("integer", "float"):
            raise ValueError(f"filter {name!r}: a range needs a number field; {name!r} is {kind}, "
                             f"give a value or a list of values")
        bad = sorted(set(value) - set(RANGE_KEYS))
        if bad or not value:
            raise ValueError(f"filter {name!r}: a range is a dict with keys among {', '.join(RANGE_KEYS)} "
                             f"(got {sorted(value) or 'no keys'})")
        for key, bound in value.items():
            if not _is_number(bound):
                raise ValueError(f"filter {name!r}: range bound {key!r} must be a number, not {bound!r}")
        return Condition(name, "range", {k: float(v) for k, v in value.items()})
    value = _scalar(name, kind, value)
    if kind == "float":
        return Condition(name, "range", {"gte": float(value), "lte": float(value)})
    return Condition(name, "eq", value)


def _scalar(name: str, kind: str, value: Any) -> Any:
    """The value as the field's Python type (str, bool, int, float; numpy scalars too), else ValueError.
    A bool is not a number here, and a number is not a bool."""
    is_bool = isinstance(value, (bool, np.bool_))
    if kind == "keyword" and isinstance(value, str):
        return value
    if kind == "bool" and is_bool:
        return bool(value)
    if kind == "integer" and isinstance(value, numbers.Integral) and not is_bool:
        return int(value)
    if kind == "float" and _is_number(value):
        return float(value)
    raise ValueError(f"filter {name!r} holds {kind} values; {value!r} ({type(value).__name__}) does not fit")


def _is_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and not math.isnan(value))


def check_space(space: str) -> str:
    """Space names become folder and collection names: letters, digits, '.', '_', '-' (not first), <= 128."""
    if not isinstance(space, str) or not _SPACE_NAME.fullmatch(space):
        raise ValueError(f"bad space name {space!r}: use letters, digits, '.', '_' and '-' (starting with a letter "
                         "or digit, at most 128 characters), e.g. engine.services.space_name(label, version)")
    return space


def check_ids(ids: Sequence[str]) -> list[str]:
    """Point ids as canonical UUID strings (what `point_id` makes); anything else raises ValueError."""
    out = []
    for i in ids:
        try:
            out.append(str(uuid.UUID(str(i))))
        except ValueError:
            raise ValueError(f"point id {i!r} is not a UUID; make ids with engine.vectors.point_id(kind, row_id)"
                             ) from None
    return out


def check_points(ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict], dim: int
                 ) -> tuple[list[str], np.ndarray, list[dict]]:
    """Checked upsert arguments: (ids, vectors (N, dim) float32 C-contiguous and finite, payloads)."""
    ids = check_ids(ids)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or vectors.shape[1] != dim:
        raise ValueError(f"upsert needs vectors of shape ({len(ids)}, {dim}) for {len(ids)} ids in a {dim}-d space, "
                         f"got {vectors.shape}")
    if len(payloads) != len(ids):
        raise ValueError(f"upsert got {len(ids)} ids but {len(payloads)} payloads; give one payload dict per id")
    if not np.isfinite(vectors).all():
        raise ValueError("upsert vectors contain NaN or inf; check the encoder output")
    return ids, vectors, [dict(p) for p in payloads]


def check_keywords(keywords: Sequence[Sparse | None] | None, n: int) -> list[Sparse | None]:
    """One Sparse or None per point (all None when `keywords` is None); anything else raises ValueError."""
    if keywords is None:
        return [None] * n
    keywords = list(keywords)
    if len(keywords) != n:
        raise ValueError(f"upsert got {n} points but {len(keywords)} keyword vectors; give one (or None) per point")
    for kw in keywords:
        if kw is not None and (not isinstance(kw, Sparse) or len(kw.indices) != len(kw.values)):
            raise ValueError(f"a keyword vector must be an engine.vectors.Sparse with as many values as indices, "
                             f"got {kw!r}; make them with engine.keywords.document_terms")
    return [kw if kw else None for kw in keywords]


def check_sparse_query(query: Sparse, k: int, offset: int) -> Sparse:
    if not isinstance(query, Sparse) or len(query.indices) != len(query.values):
        raise ValueError(f"a keyword query must be an engine.vectors.Sparse, got {query!r}; "
                         "make it with engine.keywords.query_terms")
    if not (isinstance(k, numbers.Integral) and k >= 1 and isinstance(offset, numbers.Integral) and offset >= 0):
        raise ValueError(f"search needs k >= 1 and offset >= 0 (got k={k!r}, offset={offset!r})")
    return query


def check_query(vector: np.ndarray, dim: int, k: int, offset: int) -> np.ndarray:
    """The query as a (dim,) float32 array; k >= 1 and offset >= 0, else ValueError."""
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if vector.shape != (dim,):
        raise ValueError(f"the query vector must have shape ({dim},) for this space, got {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError("the query vector contains NaN or inf; check the encoder output")
    if not (isinstance(k, numbers.Integral) and k >= 1 and isinstance(offset, numbers.Integral) and offset >= 0):
        raise ValueError(f"search needs k >= 1 and offset >= 0 (got k={k!r}, offset={offset!r})")
    return vector


def dim_mismatch(space: str, stored: int, requested: int) -> ValueError:
    """The error for ensure_space on an existing space with another dimension."""
    return ValueError(f"space {space!r} holds {stored}-d vectors, not {requested}-d: a space belongs to one model. "
                      f"Index into a new space instead (a new model name or version gives a new space name), "
                      f"or use the model that made {space!r}")


def in_order(ids: Sequence[str], records, space: str, with_vectors: bool) -> list[tuple[str, dict, np.ndarray | None]]:
    """Retrieved Qdrant records (Edge or client, both with .id/.payload/.vector) as `retrieve` returns them: in the
    order of `ids`, missing ones left out."""
    by_id = {str(r.id): r for r in records}
    out = []
    for i in ids:
        if (r := by_id.get(i)) is not None:
            vector = np.asarray(r.vector[space], dtype=np.float32) if with_vectors else None  # (dim,)
            out.append((i, dict(r.payload or {}), vector))
    return out
