"""Keyword side of hybrid search: words -> BM25 sparse vectors, and how much of a query an item's words cover.

A point's keyword text is everything written about it: captions, alt text, tags, OCR text and its file name
(`keyword_text`). Both stores index it as the sparse vector engine.vectors.KEYWORDS with Qdrant's IDF modifier, so a
keyword search scores BM25: sum over query terms of idf(term) * tf-weight(term, document).

Terms come from Qdrant's own BM25 encoder (`qdrant_edge.Bm25`, used for both stores so that the embedded store and
a server index the same terms): word tokenizer, lower case, English stop words removed, Snowball stemming ("cats"
and "cat" are one term), term ids hashed. AVG_LEN is the average keyword-text length the tf-weight normalises by:
our texts are captions and tags, ~10-20 terms, not Qdrant's default of 256.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Iterable

from .vectors import Sparse

AVG_LEN = 16.0  # terms in a typical keyword text (caption + tags + file name)
MAX_CHARS = 20_000  # longer keyword texts (a long OCR page, a document) are cut here

_encoder = None
_encoder_lock = threading.Lock()


def _bm25():
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            from qdrant_edge import Bm25, Bm25Config

            _encoder = Bm25(Bm25Config(avg_len=AVG_LEN))
        return _encoder


def file_words(path: str | Path) -> str:
    """A file name as words: "red_fox-2024.jpg" -> "red fox 2024"."""
    return re.sub(r"[_\-.+]+", " ", Path(str(path)).stem).strip()


def keyword_text(texts: Iterable[str | None]) -> str:
    """The words of an item, one text after another (empty texts left out), cut at MAX_CHARS."""
    return "\n".join(t.strip() for t in texts if t and t.strip())[:MAX_CHARS]


def document_terms(text: str) -> Sparse | None:
    """BM25 term weights of an item's keyword text; None when it has no indexable word."""
    vec = _bm25().embed_document(text or "")
    return _sparse(vec.indices, vec.values) or None


def query_terms(text: str) -> Sparse:
    """The query's terms, weight 1 each (the store multiplies by idf); empty when only stop words remain."""
    vec = _bm25().embed_query(text or "")
    return _sparse(vec.indices, vec.values)


def coverage(query: Sparse, text: str) -> float:
    """Share of the query's terms that occur in `text`: 1.0 when every word of the query (after stop words and
    stemming) is there, 0.0 when none is or the query has no terms."""
    if not query:
        return 0.0
    have = set(_bm25().embed_query(text or "").indices)
    return sum(i in have for i in query.indices) / len(query.indices)


def _sparse(indices, values) -> Sparse:
    pairs = sorted(zip((int(i) for i in indices), (float(v) for v in values)))
    return Sparse(tuple(i for i, _ in pairs), tuple(v for _, v in pairs))
