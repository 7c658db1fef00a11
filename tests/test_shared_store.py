"""One process owns the embedded Edge store; others reach it through the owner and take over when it dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from engine.edge_store import EdgeStore
from engine.shared_store import SharedStore
from engine.vectors import point_id

ROOT = Path(__file__).resolve().parents[1]

OWNER = textwrap.dedent("""
    import sys
    import numpy as np
    from engine.edge_store import EdgeStore
    from engine.shared_store import SharedStore
    from engine.vectors import point_id

    root = sys.argv[1]
    store = SharedStore(root, lambda: EdgeStore(root))
    store.ensure_space("m", 4)
    store.upsert("m", [point_id("image", i) for i in range(3)], np.eye(4, dtype=np.float32)[:3],
                 [{"asset_id": i, "collection": "a"} for i in range(3)])
    print("owner" if store.is_owner else "client", flush=True)
    sys.stdin.readline()  # hold the store until told to go
    store.close()
""")


def start_owner(root: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", OWNER, str(root)], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "owner"
    return p


def test_a_second_process_searches_through_the_owner_and_takes_over_when_it_dies(tmp_path):
    root = tmp_path / "qdrant"
    owner = start_owner(root)
    try:
        store = SharedStore(root, lambda: EdgeStore(root))
        hits = store.search("m", np.array([0, 1, 0, 0], np.float32), k=2)
        assert not store.is_owner  # a client: opening the shard itself would have failed on its WAL lock
        assert hits[0].id == point_id("image", 1) and hits[0].payload["asset_id"] == 1
        store.upsert("m", [point_id("image", 3)], np.eye(4, dtype=np.float32)[3:], [{"asset_id": 3}])
        assert store.count("m") == 4

        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        # the next call finds the owner gone, takes the lock and opens the shard: nothing written is lost
        assert store.count("m") == 4 and store.is_owner
        assert store.search("m", np.array([0, 0, 0, 1], np.float32), k=1)[0].payload["asset_id"] == 3
        store.close()
    finally:
        owner.kill()


def test_an_owner_that_closes_hands_the_store_to_its_clients(tmp_path):
    root = tmp_path / "qdrant"
    owner = start_owner(root)
    store = SharedStore(root, lambda: EdgeStore(root))
    try:
        assert store.count("m", {"collection": "a"}) == 3 and not store.is_owner
        owner.communicate("go\n", timeout=60)  # a clean exit: close() releases the lock
        assert owner.returncode == 0
        assert store.count("m", {"collection": "a"}) == 3 and store.is_owner
    finally:
        store.close()
        owner.kill()


def test_errors_of_the_owner_reach_the_caller(tmp_path):
    root = tmp_path / "qdrant"
    owner = start_owner(root)
    store = SharedStore(root, lambda: EdgeStore(root))
    try:
        try:
            store.ensure_space("m", 8)  # the space holds 4-d vectors
        except ValueError as e:
            assert "m" in str(e) and "4" in str(e) and "8" in str(e)
        else:
            raise AssertionError("a dimension mismatch was accepted")
        assert not store.is_owner and store.count("m") == 3  # the connection is still usable
    finally:
        store.close()
        owner.kill()
