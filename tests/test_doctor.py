"""A damaged store or database is noticed, explained in one line, and repaired (issue 11, item 4): the vector folder
deleted, random bytes in the vector files, a corrupt SQLite file; `omnibridge doctor [--repair]`, /health, backup
and restore with nothing lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from engine.api.main import create_app
from engine.db import DatabaseError
from engine.engine import Engine
from engine.services import Services, close_store
from engine.settings import load_settings
from engine.vectors import StoreDamaged
from ingest import backup, doctor, pipeline
from tests.test_ingest import model, photos  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def fresh(home: Path, model) -> Services:  # noqa: F811
    """A new process's view of `home` (the old one's store closed: as after a restart)."""
    svc = Services(load_settings(home=home, batch_size=8))
    svc._model = model
    return svc


def top(svc: Services, text: str) -> str:
    hits = Engine(svc).search(text=text, collection="photos", mode="vector", min_relevance=0, k=1)["hits"]
    return Path(hits[0]["path"]).name


def cli(home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIBRIDGE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", "from engine.cli import main; main()", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def indexed(tmp_path, photos, model):  # noqa: F811
    home = tmp_path / "home"
    svc = fresh(home, model)
    job = pipeline.run_inline(svc, [str(photos)], "photos")
    assert job["indexed"] == 21
    yield home, svc
    close_store(svc.settings)


def test_a_deleted_vector_folder_is_noticed_and_rebuilt(indexed, model):  # noqa: F811
    home, svc = indexed
    before = top(svc, "a cup of coffee")
    close_store(svc.settings)
    shutil.rmtree(home / "qdrant")
    svc = fresh(home, model)
    health = Engine(svc).health()
    assert health["problem"] and "omnibridge doctor --repair" in health["problem"]
    with TestClient(create_app(svc)) as client:
        r = client.get("/health").json()
        assert r["status"] == "degraded" and "doctor --repair" in r["problem"]
    report = doctor.check(svc)
    assert not report["ok"] and report["spaces"][0]["missing"] == report["spaces"][0]["sql_points"] > 21
    # re-ingesting alone would skip every file as unchanged: the repair re-embeds them
    report = doctor.check(svc, repair=True)
    assert sum(j["indexed"] for j in report["repaired"]["reembedded_jobs"]) == 21
    assert doctor.check(svc)["ok"] and Engine(svc).health()["problem"] is None
    assert top(svc, "a cup of coffee") == before


@pytest.mark.parametrize("keep", [1024, 0], ids=["data", "whole-files"])
def test_random_bytes_in_the_vector_files_never_give_a_perfect_match(indexed, model, keep):  # noqa: F811
    home, svc = indexed
    close_store(svc.settings)
    rng = np.random.default_rng(0)
    damaged = 0
    for f in sorted((home / "qdrant").rglob("*")):
        if f.is_file() and f.stat().st_size > 4096 and "segments" in f.parts:
            data = bytearray(f.read_bytes())
            data[keep:len(data) - keep] = rng.integers(0, 256, len(data) - 2 * keep, dtype=np.uint8).tobytes()
            f.write_bytes(bytes(data))
            damaged += 1
    assert damaged
    svc = fresh(home, model)
    engine = Engine(svc)
    try:
        hits = engine.search(text="a cup of coffee", collection="photos", mode="vector", min_relevance=0)["hits"]
        assert all(abs(h["similarity"]) <= 2 for h in hits), hits  # readable garbage still never scores 1e36
    except StoreDamaged as e:
        assert "omnibridge doctor --repair" in str(e)
    report = doctor.check(svc, repair=True)
    assert not report["spaces"][0]["missing"] == report["spaces"][0]["bad"] == 0 or report["spaces"][0]["damaged"]
    svc = fresh(home, model)
    assert doctor.check(svc)["ok"]
    assert top(svc, "a cup of coffee") == "coffee.png"


def test_a_corrupt_database_is_one_line_naming_the_file_and_the_fix(indexed, model, tmp_path):  # noqa: F811
    home, svc = indexed
    close_store(svc.settings)
    svc.sessions.kw["bind"].dispose()  # the last connection checkpoints the WAL into the file
    db = home / "omnibridge.db"
    data = bytearray(db.read_bytes())
    data[:100] = b"\x00garbage" * 12 + b"\x00" * 4
    db.write_bytes(bytes(data))
    with pytest.raises(DatabaseError, match="is damaged.*omnibridge restore"):
        fresh(home, model).session()
    for args in (["status"], ["search", "coffee", "--collection", "photos"], ["doctor"]):
        out = cli(home, *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
        assert out.stderr.startswith("error: the metadata database") and str(db) in out.stderr, out.stderr
    app = create_app(fresh(home, model))
    with TestClient(app) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable" and "damaged" in r.json()["database"]


def test_backup_and_restore_lose_nothing(indexed, model, tmp_path, photos):  # noqa: F811
    home, svc = indexed
    info = backup.backup(svc.settings, tmp_path / "backup")
    assert (tmp_path / "backup" / "omnibridge.db").is_file() and info["bytes"] > 0
    with pytest.raises(ValueError, match="already holds files"):
        backup.backup(svc.settings, tmp_path / "backup")
    # after the backup: an upload (its only copy is in the data directory)
    engine = Engine(svc)
    from PIL import Image

    Image.open(photos.parent / "images" / "rocket.png").rotate(90, expand=True).save(tmp_path / "late.png")
    job = engine.ingest_uploads("photos", [("late-rocket.png", (tmp_path / "late.png").read_bytes())])
    engine.ingest_runner.close()
    import time

    deadline = time.monotonic() + 120
    while pipeline.job_summary(svc, job)["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # ... and a library folder indexed after the backup (the restored database will not know it)
    late = tmp_path / "late-folder"
    late.mkdir()
    Image.open(photos.parent / "images" / "horse.png").rotate(180).save(late / "late-horse.png")
    assert pipeline.run_inline(svc, [str(late)], "photos")["indexed"] == 1
    # restore refuses while a process owns the data
    svc.store.spaces()
    with pytest.raises(ValueError, match="a process is using"):
        backup.restore(svc.settings, tmp_path / "backup")
    close_store(svc.settings)
    (home / "omnibridge.db").write_bytes(b"not a database at all" * 100)  # the disaster
    aside = backup.restore(svc.settings, tmp_path / "backup")
    assert (aside / "omnibridge.db").read_bytes().startswith(b"not a database")  # kept, not deleted
    svc = fresh(home, model)
    report = doctor.check(svc, repair=True)
    assert doctor.check(svc)["ok"]
    hits = Engine(svc).search(text="late rocket", collection="photos", mode="keyword")["hits"]
    assert [Path(h["path"]).name for h in hits][:1] == ["late-rocket.png"], (hits, report["repaired"])
    assert Engine(svc).search(text="coffee", collection="photos", mode="keyword")["hits"]
    hits = Engine(svc).search(text="late horse", collection="photos", mode="keyword")["hits"]
    assert [Path(h["path"]).name for h in hits][:1] == ["late-horse.png"], report["repaired"]
