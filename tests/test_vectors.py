"""The VectorStore contract (engine.vectors), one set of tests run on every store: embedded Qdrant Edge in a temporary
folder, qdrant-client's in-memory local mode, and a real Qdrant server when OMNIBRIDGE_TEST_QDRANT_URL names one.
Then what only Edge has: reopening in another process, surviving a SIGKILL of the writer, one owner per folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from engine.edge_store import EdgeStore, ShardLocked
from engine.qdrant_store import QdrantServerStore, QdrantUnavailable
from engine.vectors import Condition, SpaceNotFound, VectorStore, parse_filter, point_id

ROOT = Path(__file__).resolve().parents[1]
SPACE = "test-3f2a9c1b"
SERVER_URL = os.environ.get("OMNIBRIDGE_TEST_QDRANT_URL")
# Edge builds an HNSW graph only for segments above this much vector data: low, so 2000 x 64 floats get one
EDGE_INDEXING_KB = 100


# -- stores ----------------------------------------------------------------------------------------------------

@dataclass
class Backend:
    name: str
    open: Callable[[], VectorStore]  # a new store over the same data
    persistent: bool  # the data outlives close()


@pytest.fixture(params=[
    "edge",
    "memory",
    pytest.param("server", marks=pytest.mark.skipif(
        not SERVER_URL, reason="set OMNIBRIDGE_TEST_QDRANT_URL=http://HOST:6333 to run against a Qdrant server")),
])
def backend(request, tmp_path):
    if request.param == "edge":
        yield Backend("edge", lambda: EdgeStore(tmp_path / "qdrant", indexing_threshold_kb=EDGE_INDEXING_KB), True)
    elif request.param == "memory":
        yield Backend("memory", lambda: QdrantServerStore(":memory:"), False)
    else:
        prefix = f"test{uuid.uuid4().hex[:8]}"  # this test's own collections on the shared server
        yield Backend("server", lambda: QdrantServerStore(SERVER_URL, prefix=prefix), True)
        cleanup = QdrantServerStore(SERVER_URL, prefix=prefix)
        for space in cleanup.spaces():
            cleanup.client.delete_collection(cleanup.collection(space))
        cleanup.close()


@pytest.fixture
def store(backend):
    s = backend.open()
    yield s
    s.close()


def make_points(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    """n points: ids, vectors (n, dim) float32 (not normalized, so scores are plain dot products), payloads."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [point_id("image", i) for i in range(n)]
    colours = ["red", "green", "blue", "black"]
    payloads = [{
        "collection": "a" if i % 2 else "b", "kind": "image" if i % 4 else "text", "format": "JPEG",
        "tags": [colours[i % 4], colours[(i // 4) % 4]], "synthetic": i % 3 == 0, "mtime": 1000.0 + i,
        "width": 100 * (i % 7), "height": 50 + i, "bytes": 1000 * i, "asset_id": i,
    } for i in range(n)]
    return ids, vectors, payloads


@pytest.fixture
def filled(store):
    """The store with 60 points of dim 16 in SPACE: (store, ids, vectors, payloads)."""
    ids, vectors, payloads = make_points(60, 16)
    store.ensure_space(SPACE, 16)
    store.upsert(SPACE, ids, vectors, payloads)
    return store, ids, vectors, payloads


# -- the contract ----------------------------------------------------------------------------------------------

def test_ensure_space_is_idempotent_and_refuses_another_dim(filled):
    store, ids, _, _ = filled
    store.ensure_space(SPACE, 16)  # again: keeps the points
    assert store.spaces() == [SPACE] and store.count(SPACE) == len(ids)
    with pytest.raises(ValueError) as e:
        store.ensure_space(SPACE, 32)
    assert all(s in str(e.value) for s in (SPACE, "16", "32", "new space"))
    assert store.count(SPACE) == len(ids)


def test_search_ranks_by_dot_product_with_payloads(filled):
    store, ids, vectors, payloads = filled
    query = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    scores = vectors @ query  # (60,)
    expected = np.argsort(-scores)[:10]
    for exact in (True, False):
        hits = store.search(SPACE, query, k=10, exact=exact)
        assert [h.id for h in hits] == [ids[i] for i in expected]
        np.testing.assert_allclose([h.score for h in hits], scores[expected], rtol=1e-5, atol=1e-5)
        assert [h.payload for h in hits] == [payloads[i] for i in expected]


def test_upsert_replaces_vector_and_payload(filled):
    store, ids, vectors, _ = filled
    new = -vectors[5:6]
    store.upsert(SPACE, [ids[5]], new, [{"collection": "c", "asset_id": 5}])
    assert store.count(SPACE) == len(ids)
    ((pid, payload, vector),) = store.retrieve(SPACE, [ids[5]], with_vectors=True)
    assert pid == ids[5] and payload == {"collection": "c", "asset_id": 5}  # replaced, not merged
    np.testing.assert_array_equal(vector, new[0])
    assert store.search(SPACE, new[0], k=1, exact=True)[0].id == ids[5]


def test_delete(filled):
    store, ids, vectors, _ = filled
    store.delete(SPACE, [ids[0], ids[1], point_id("image", 999)])  # an id that is not there is ignored
    store.delete(SPACE, [])
    assert store.count(SPACE) == len(ids) - 2
    assert [r[0] for r in store.retrieve(SPACE, ids[:3])] == [ids[2]]
    found = {h.id for h in store.search(SPACE, vectors[0], k=len(ids), exact=True)}
    assert ids[0] not in found and ids[1] not in found and len(found) == len(ids) - 2


def test_set_payload_merges(filled):
    store, ids, _, payloads = filled
    store.set_payload(SPACE, [ids[0], ids[1], point_id("image", 999)], {"near_dup_group": 3, "collection": "z"})
    got = {pid: p for pid, p, _ in store.retrieve(SPACE, ids[:3])}
    assert got[ids[0]] == {**payloads[0], "near_dup_group": 3, "collection": "z"}
    assert got[ids[1]] == {**payloads[1], "near_dup_group": 3, "collection": "z"}
    assert got[ids[2]] == payloads[2]
    assert store.count(SPACE, {"collection": "z"}) == 2  # the indexed field follows the new value


FILTERS = {  # filter -> the same test on a payload
    "keyword": ({"collection": "a"}, lambda p: p["collection"] == "a"),
    "keyword any of": ({"kind": ["text", "video"]}, lambda p: p["kind"] == "text"),
    "tags any of": ({"tags": ["red", "blue"]}, lambda p: bool({"red", "blue"} & set(p["tags"]))),
    "tags one": ({"tags": "green"}, lambda p: "green" in p["tags"]),
    "bool true": ({"synthetic": True}, lambda p: p["synthetic"]),
    "bool false": ({"synthetic": False}, lambda p: not p["synthetic"]),
    "float range": ({"mtime": {"gte": 1010, "lt": 1020.5}}, lambda p: 1010 <= p["mtime"] < 1020.5),
    "float equal": ({"mtime": 1007.0}, lambda p: p["mtime"] == 1007.0),
    "integer range": ({"width": {"gt": 200, "lte": 500}}, lambda p: 200 < p["width"] <= 500),
    "integer equal": ({"width": 300}, lambda p: p["width"] == 300),
    "integer any of": ({"asset_id": [1, 3, 5, 999]}, lambda p: p["asset_id"] in (1, 3, 5)),
    "combined": ({"collection": "b", "synthetic": False, "tags": ["red", "black"], "width": {"gte": 100},
                  "mtime": {"lt": 1050}},
                 lambda p: p["collection"] == "b" and not p["synthetic"] and bool({"red", "black"} & set(p["tags"]))
                 and p["width"] >= 100 and p["mtime"] < 1050),
}


@pytest.mark.parametrize("kind", FILTERS)
def test_filters(filled, kind):
    store, ids, vectors, payloads = filled
    flt, test = FILTERS[kind]
    expected = {ids[i] for i, p in enumerate(payloads) if test(p)}
    assert 0 < len(expected) < len(ids)  # the filter really selects
    assert store.count(SPACE, flt) == len(expected)
    query = vectors[7]
    hits = store.search(SPACE, query, k=len(ids), filter=flt, exact=True)
    assert {h.id for h in hits} == expected
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(test(h.payload) for h in hits)


def test_offset_pagination(filled):
    store, ids, vectors, _ = filled
    query = vectors[3]
    for flt in (None, {"synthetic": False}):
        full = [h.id for h in store.search(SPACE, query, k=30, filter=flt, exact=True)]
        pages = [[h.id for h in store.search(SPACE, query, k=10, offset=o, filter=flt, exact=True)]
                 for o in (0, 10, 20)]
        assert sum(pages, []) == full and len(set(full)) == 30
    assert len(store.search(SPACE, query, k=10, offset=55)) == 5


def test_count(filled):
    store, ids, _, payloads = filled
    assert store.count(SPACE) == len(ids)
    assert store.count(SPACE, {"collection": "a"}) == sum(p["collection"] == "a" for p in payloads)
    assert store.count(SPACE, {"collection": "nowhere"}) == 0


def test_retrieve_with_and_without_vectors(filled):
    store, ids, vectors, payloads = filled
    wanted = [ids[9], point_id("image", 999), ids[2]]
    without = store.retrieve(SPACE, wanted)
    assert [(i, p, v) for i, p, v in without] == [(ids[9], payloads[9], None), (ids[2], payloads[2], None)]
    with_vectors = store.retrieve(SPACE, wanted, with_vectors=True)
    assert [i for i, _, _ in with_vectors] == [ids[9], ids[2]]
    for (_, _, v), row in zip(with_vectors, (9, 2)):
        assert v.dtype == np.float32 and v.shape == (16,)
        np.testing.assert_array_equal(v, vectors[row])
    assert store.retrieve(SPACE, []) == []


KEYWORD_DOCS = ["a tabby cat asleep on a mat", "a dog running in the park", "two cats and a dog", "coffee cup",
                 "a red flower", "", "cat cat cat cat cat"]


def test_keyword_search_scores_bm25_with_idf_under_filters(store):
    from engine.keywords import document_terms, query_terms

    ids, vectors, payloads = make_points(len(KEYWORD_DOCS), 8)
    store.ensure_space(SPACE, 8)
    store.upsert(SPACE, ids, vectors, payloads, [document_terms(d) for d in KEYWORD_DOCS])
    hits = store.keyword_search(SPACE, query_terms("cats"), k=10)
    assert {h.payload["asset_id"] for h in hits} == {0, 2, 6}  # "cats" and "cat" are one term; nothing else matches
    assert hits == sorted(hits, key=lambda h: -h.score)
    both = store.keyword_search(SPACE, query_terms("dog park"), k=10)
    assert both[0].payload["asset_id"] == 1  # two terms, and "park" is the rarer one
    dogs = store.keyword_search(SPACE, query_terms("dog"), k=10, filter={"collection": "b"})
    assert [h.payload["asset_id"] for h in dogs] == [2]  # asset 1 has a dog too, in collection "a"
    assert store.keyword_search(SPACE, query_terms("the a of"), k=10) == []  # only stop words
    assert store.keyword_search(SPACE, query_terms("giraffe"), k=10) == []
    assert len(store.keyword_search(SPACE, query_terms("cat"), k=1, offset=1)) == 1


def test_keyword_input_is_checked(store):
    from engine.vectors import Sparse

    ids, vectors, payloads = make_points(2, 8)
    store.ensure_space(SPACE, 8)
    with pytest.raises(ValueError, match="one \\(or None\\) per point"):
        store.upsert(SPACE, ids, vectors, payloads, [None])
    with pytest.raises(ValueError, match="engine.keywords.document_terms"):
        store.upsert(SPACE, ids, vectors, payloads, [Sparse((1, 2), (1.0,)), None])
    with pytest.raises(ValueError, match="engine.keywords.query_terms"):
        store.keyword_search(SPACE, "cat")


def test_edge_space_made_before_keywords_still_searches(tmp_path):
    """A shard created without the keyword vector opens (no 'incompatible config'), takes upserts and answers
    vector searches; keyword_search says it has no index (None)."""
    from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams

    from engine.keywords import document_terms, query_terms

    old = EdgeShard.create(str(tmp_path / "q" / SPACE), EdgeConfig(vectors={SPACE: EdgeVectorParams(size=8, distance=Distance.Dot)}))
    old.close()
    store = EdgeStore(tmp_path / "q")
    ids, vectors, payloads = make_points(3, 8)
    store.ensure_space(SPACE, 8)
    store.upsert(SPACE, ids, vectors, payloads, [document_terms("a cat")] * 3)
    assert len(store.search(SPACE, vectors[0], k=3)) == 3
    assert store.keyword_search(SPACE, query_terms("cat")) is None
    store.close()


def test_two_models_two_spaces_same_ids(store):
    ids, small, payloads = make_points(20, 8, seed=1)
    _, large, _ = make_points(20, 12, seed=2)
    store.ensure_space("model-a-1", 8)
    store.ensure_space("model-b-2", 12)
    store.upsert("model-a-1", ids, small, payloads)
    store.upsert("model-b-2", ids, large, payloads)
    assert store.spaces() == ["model-a-1", "model-b-2"]
    for space, vectors in (("model-a-1", small), ("model-b-2", large)):
        hits = store.search(space, vectors[4], k=3, exact=True)
        assert hits[0].id == ids[int(np.argmax(vectors @ vectors[4]))]
        np.testing.assert_array_equal(store.retrieve(space, [ids[4]], with_vectors=True)[0][2], vectors[4])
    store.delete("model-a-1", ids[:5])
    assert store.count("model-a-1") == 15 and store.count("model-b-2") == 20
    with pytest.raises(ValueError, match="shape"):
        store.search("model-b-2", small[0])


def test_hnsw_after_optimize_recalls_the_exact_neighbours(backend, store):
    n, dim, k = 2000, 64, 10
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [point_id("text", i) for i in range(n)]
    store.ensure_space(SPACE, dim)
    store.upsert(SPACE, ids, vectors, [{"asset_id": i} for i in range(n)])
    store.optimize(SPACE)
    if backend.name == "edge":
        assert store.stats(SPACE)["indexed_vectors"] == n  # the approximate searches below walk a real graph
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    recalls = []
    for q in queries:
        exact = [h.id for h in store.search(SPACE, q, k=k, exact=True)]
        assert exact == [ids[i] for i in np.argsort(-(vectors @ q))[:k]]
        approx = {h.id for h in store.search(SPACE, q, k=k)}
        recalls.append(len(approx & set(exact)) / k)
    assert np.mean(recalls) >= 0.9


def test_data_survives_close_and_reopen(backend, filled):
    store, ids, vectors, payloads = filled
    if not backend.persistent:  # in-memory: a new store starts empty, whatever the old one held
        store.close()
        fresh = backend.open()
        assert fresh.spaces() == []
        fresh.close()
        return
    store.set_payload(SPACE, ids[:1], {"near_dup_group": 1})
    store.delete(SPACE, ids[-1:])
    store.close()
    again = backend.open()
    try:
        again.ensure_space(SPACE, 16)
        assert again.spaces() == [SPACE] and again.count(SPACE) == len(ids) - 1
        ((_, payload, vector),) = again.retrieve(SPACE, ids[:1], with_vectors=True)
        assert payload == {**payloads[0], "near_dup_group": 1}
        np.testing.assert_array_equal(vector, vectors[0])
        assert again.search(SPACE, vectors[0], k=1, exact=True)[0].id == ids[int(np.argmax(vectors[:-1] @ vectors[0]))]
        assert again.count(SPACE, {"synthetic": True}) == sum(p["synthetic"] for p in payloads[:-1])
        with pytest.raises(ValueError, match="new space"):
            again.ensure_space(SPACE, 8)
    finally:
        again.close()


@pytest.mark.parametrize("call, message", [
    (lambda s: s.count(SPACE, {"path": "x"}), "cannot filter on 'path'"),
    (lambda s: s.count(SPACE, {"tags": []}), "'tags'.*empty"),
    (lambda s: s.count(SPACE, {"mtime": {"after": 3}}), "'mtime'.*gt, gte, lt, lte"),
    (lambda s: s.count(SPACE, {"width": "wide"}), "'width' holds integer"),
    (lambda s: s.count(SPACE, {"synthetic": 1}), "'synthetic' holds bool"),
    (lambda s: s.count(SPACE, {"collection": {"gt": 1}}), "'collection'.*range"),
    (lambda s: s.search(SPACE, np.zeros(15, np.float32)), r"shape \(16,\)"),
    (lambda s: s.search(SPACE, np.zeros(16, np.float32), k=0), "k >= 1"),
    (lambda s: s.upsert(SPACE, ["not-a-uuid"], np.zeros((1, 16)), [{}]), "point_id"),
    (lambda s: s.upsert(SPACE, [point_id("image", 1)], np.zeros((2, 16)), [{}]), r"shape \(1, 16\)"),
    (lambda s: s.upsert(SPACE, [point_id("image", 1)], np.full((1, 16), np.nan), [{}]), "NaN"),
    (lambda s: s.count("missing-space"), "ensure_space"),
    (lambda s: s.ensure_space("../escape", 16), "bad space name"),
])
def test_bad_input_is_refused_with_the_fix(filled, call, message):
    store = filled[0]
    with pytest.raises(ValueError, match=message):
        call(store)
    assert store.count(SPACE) == 60  # nothing was written


def test_unknown_space_is_space_not_found(store):
    with pytest.raises(SpaceNotFound, match="ensure_space"):
        store.search("nothing-here", np.zeros(4, np.float32))


def test_parse_filter_normalizes():
    assert parse_filter(None) == [] and parse_filter({}) == []
    assert parse_filter({"mtime": 5, "asset_id": [np.int64(2)], "synthetic": np.bool_(False)}) == [
        Condition("mtime", "range", {"gte": 5.0, "lte": 5.0}),
        Condition("asset_id", "any", (2,)),
        Condition("synthetic", "eq", False),
    ]


# -- Qdrant server ---------------------------------------------------------------------------------------------

def test_unreachable_server_names_the_url_and_the_fix():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(QdrantUnavailable) as e:
        QdrantServerStore(url)
    assert url in str(e.value) and "OMNIBRIDGE_QDRANT_URL" in str(e.value)


# -- Edge: processes -------------------------------------------------------------------------------------------

def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


READER = """
    import sys
    from pathlib import Path
    import numpy as np
    from engine.edge_store import EdgeStore
    from engine.vectors import point_id
    store = EdgeStore(Path(sys.argv[1]))
    hit = store.search(sys.argv[2], np.ones(16, np.float32), k=1, exact=True)[0]
    ((_, payload, _),) = store.retrieve(sys.argv[2], [point_id("image", 0)])
    print(store.spaces(), store.count(sys.argv[2]), store.count(sys.argv[2], {"collection": "a"}), hit.id,
          payload.get("near_dup_group"))
    store.close()
"""


def expected_reader_line(space: str, ids, vectors, payloads, group=None) -> str:
    best = ids[int(np.argmax(vectors @ np.ones(16, np.float32)))]
    return f"{[space]} {len(ids)} {sum(p['collection'] == 'a' for p in payloads)} {best} {group}"


def test_edge_reopens_in_another_process(tmp_path):
    ids, vectors, payloads = make_points(60, 16)
    with EdgeStore(tmp_path) as store:
        store.ensure_space(SPACE, 16)
        store.upsert(SPACE, ids, vectors, payloads)
    out = run_python(READER, str(tmp_path), SPACE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected_reader_line(SPACE, ids, vectors, payloads)


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "wal-only"])
def test_edge_writes_survive_a_sigkill_of_the_writer(tmp_path, fsync):
    """The writer kills itself with SIGKILL as soon as its last write returns: no close, no flush, no atexit."""
    writer = """
        import os, signal, sys
        from pathlib import Path
        from tests.test_vectors import SPACE, make_points
        from engine.edge_store import EdgeStore
        ids, vectors, payloads = make_points(300, 16)
        store = EdgeStore(Path(sys.argv[1]), fsync=sys.argv[2] == "True")
        store.ensure_space(SPACE, 16)
        store.upsert(SPACE, ids[:200], vectors[:200], payloads[:200])
        store.upsert(SPACE, ids[200:], vectors[200:], payloads[200:])
        store.delete(SPACE, ids[-1:])
        store.set_payload(SPACE, ids[:1], {"near_dup_group": 7})
        os.kill(os.getpid(), signal.SIGKILL)
    """
    out = run_python(writer, str(tmp_path), str(fsync))
    assert out.returncode == -signal.SIGKILL, out.stderr
    ids, vectors, payloads = make_points(300, 16)
    ids, vectors, payloads = ids[:-1], vectors[:-1], payloads[:-1]  # the deleted one
    out = run_python(READER, str(tmp_path), SPACE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected_reader_line(SPACE, ids, vectors, payloads, group=7)


def test_edge_folder_has_one_owner(tmp_path):
    ids, vectors, payloads = make_points(60, 16)
    owner = EdgeStore(tmp_path)
    owner.ensure_space(SPACE, 16)
    owner.upsert(SPACE, ids, vectors, payloads)
    with pytest.raises(ShardLocked, match="one owner per folder"):  # in this process
        EdgeStore(tmp_path).count(SPACE)
    out = run_python(READER, str(tmp_path), SPACE)  # in another one
    assert out.returncode == 1 and "ShardLocked" in out.stderr and "one owner per folder" in out.stderr
    owner.close()  # unlocks: now the other process can open it
    out = run_python(READER, str(tmp_path), SPACE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected_reader_line(SPACE, ids, vectors, payloads)
    with pytest.raises(RuntimeError, match="closed"):
        owner.count(SPACE)


def test_edge_spaces_are_the_shard_folders(tmp_path):
    (tmp_path / "owner.lock").touch()  # what engine.shared_store keeps beside the shards
    (tmp_path / "notes").mkdir()
    with EdgeStore(tmp_path) as store:
        store.ensure_space("b-space", 4)
        store.ensure_space("a-space", 4)
        assert store.spaces() == ["a-space", "b-space"]
        assert store.stats("a-space") == {"points": 0, "indexed_vectors": 0, "segments": 1}


def test_server_collections_get_the_configured_shards_and_replicas(monkeypatch):
    """OMNIBRIDGE_QDRANT_SHARDS / _REPLICAS reach create_collection (local mode ignores them, so record the call)."""
    store = QdrantServerStore(":memory:", shards=6, replicas=2)
    seen = {}
    create = store.client.create_collection

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return create(*args, **kwargs)

    monkeypatch.setattr(store.client, "create_collection", recording)
    store.ensure_space(SPACE, 8)
    assert seen["shard_number"] == 6 and seen["replication_factor"] == 2
    assert "keywords" in seen["sparse_vectors_config"]
    store.close()
