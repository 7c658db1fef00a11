"""The one vector-store contract, and the stores behind it: embedded Qdrant Edge and a Qdrant server.

A store holds one *space* per model (`space` = the model's vector name, e.g. "default-3f2a9c1b"): its own Qdrant
collection (server) or shard directory (Edge) with one dense named vector of that name, Dot distance (our vectors
are built so that the dot product is the blended similarity; see omnibridge.retrieval), and the same point ids and
payloads in every space. A new model is indexed into a new space beside the old one; switching is a settings change.

Point ids are UUID strings (see `point_id`). Payload fields with an index: collection, kind ('image'|'text'),
format, tags (list), synthetic (bool), mtime (float, unix seconds), width, height, bytes (ints), asset_id (int).
Filters are plain dicts: {"collection": "x", "tags": ["a", "b"] (any of), "synthetic": False,
"mtime": {"gte": t0, "lt": t1}, ...}: a list means "any of", a dict with gt/gte/lt/lte a range, a scalar equality.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

INDEXED_FIELDS = {
    "collection": "keyword", "kind": "keyword", "format": "keyword", "tags": "keyword", "synthetic": "bool",
    "mtime": "float", "width": "integer", "height": "integer", "bytes": "integer", "asset_id": "integer",
}
_NAMESPACE = uuid.UUID("6f1b7a52-3c1e-4f0e-9a65-0b1d5e7c2a10")


def point_id(kind: str, row_id: int) -> str:
    """Stable point id of an SQL row: the same asset or text always maps to the same point (upserts are idempotent)."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{row_id}"))


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


class VectorStore(Protocol):
    def ensure_space(self, space: str, dim: int) -> None:
        """Create the space if missing (with the payload indexes); a dim mismatch with an existing space raises."""

    def spaces(self) -> list[str]: ...

    def upsert(self, space: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        """vectors (N, dim) float32. Re-upserting an id replaces its vector and payload."""

    def delete(self, space: str, ids: Sequence[str]) -> None: ...

    def set_payload(self, space: str, ids: Sequence[str], payload: dict) -> None:
        """Merge `payload` into the points' payloads."""

    def search(self, space: str, vector: np.ndarray, k: int = 10, filter: dict | None = None,
               offset: int = 0, exact: bool = False) -> list[Hit]:
        """Best first by dot product."""

    def count(self, space: str, filter: dict | None = None) -> int: ...

    def retrieve(self, space: str, ids: Sequence[str], with_vectors: bool = False) -> list[tuple[str, dict, np.ndarray | None]]: ...

    def optimize(self, space: str) -> None:
        """Build the HNSW index now (Edge builds lazily); a no-op where the server does it itself."""

    def close(self) -> None: ...
