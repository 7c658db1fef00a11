"""Recovery everywhere (issue 11, item 2): whatever process owns ingestion resumes the jobs a killed one left, and a
stalled job is picked up by a live process without a new one.

- the API (embedded default) is SIGKILLed mid-job and started again: the job finishes by itself, every file once;
- a runner that is alive sweeps a job whose owner died (no restart at all);
- a worker-mode sweep re-queues a stalled job's work, and exactly one of two sweepers claims it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select, update

from engine.db import Asset, Job, Vector
from engine.launch import api_command
from engine.services import Services
from engine.settings import load_settings
from ingest import pipeline
from ingest.runner import IngestRunner
from tests.test_ingest import model  # noqa: F401  (fixture)
from tests.test_launch import free_port
from tests.test_worker import write_images

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "recovery-test-admin-key-0123456789"


def start_api(home: Path, library: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMNIBRIDGE_HOME": str(home), "OMNIBRIDGE_LIBRARY_ROOTS": str(library),
           "OMNIBRIDGE_ADMIN_KEY": ADMIN, "OMNIBRIDGE_JOB_STALE_SECONDS": "2", "OMNIBRIDGE_BATCH_SIZE": "4",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(api_command("127.0.0.1", port), env=env, cwd=ROOT, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503):
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


def test_a_job_interrupted_by_killing_the_api_finishes_after_a_restart(tmp_path):
    home, library, log = tmp_path / "home", tmp_path / "library", tmp_path / "api.log"
    write_images(library / "pics", 48)
    port = free_port()
    api = start_api(home, library, port, log)
    h = {"X-API-Key": ADMIN}
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/collections/pics/ingest", json={"paths": [str(library / "pics")]},
                       headers=h, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}", headers=h, timeout=10).json())[
                "indexed"] < 8:  # some batches in, most to go
            assert job["status"] not in ("done", "failed") and time.monotonic() < deadline, job
            time.sleep(0.05)
        api.send_signal(signal.SIGKILL)
        api.wait(10)
        svc = Services(load_settings(home=home))
        with svc.session() as db:
            killed = db.get(Job, job_id)
            assert killed.status == "running" and killed.indexed < 48, (killed.status, killed.indexed)
        api = start_api(home, library, port, log)  # nobody runs `omnibridge ingest`: the API resumes it
        deadline = time.monotonic() + 300
        while (job := httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}", headers=h, timeout=10).json())[
                "status"] != "done":
            assert job["status"] != "failed" and time.monotonic() < deadline, job
            time.sleep(0.3)
        assert (job["indexed"], job["failed"]) == (48, 0), job
        with svc.session() as db:
            rows = db.scalar(select(func.count()).select_from(Vector).where(Vector.kind == "image"))
            points = db.scalar(select(func.count(func.distinct(Vector.point_id))).where(Vector.kind == "image"))
            indexed = db.scalar(select(func.count()).select_from(Asset).where(Asset.status == "indexed"))
        assert rows == points == indexed == 48
        r = httpx.post(f"http://127.0.0.1:{port}/search", json={"text": "a picture", "collection": "pics",
                                                                "min_relevance": 0, "k": 200, "collapse": False},
                       headers=h, timeout=60)
        ids = [hit["id"] for hit in r.json()["hits"]]
        assert len(ids) == len(set(ids)) == 48  # exactly once in the vector store too
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(30)


def test_a_live_runner_picks_up_a_job_whose_owner_died(tmp_path, model):  # noqa: F811
    """No restart: a job left `running` with pending files by a dead process is claimed by the live runner's
    sweep once it is stale, and finished there."""
    write_images(tmp_path / "pics", 12)
    svc = Services(load_settings(home=tmp_path / "home", batch_size=4, job_stale_seconds=1))
    svc._model = model
    job_id = pipeline.create_job(svc, [str(tmp_path / "pics")], "pics")
    pending = pipeline.scan(svc, job_id)
    pipeline.embed(svc, job_id, pending[:4])  # ... and then its owner died
    runner = IngestRunner(svc)
    try:
        assert runner.sweep() == []  # fresh: maybe its owner is only busy
        time.sleep(1.2)  # past job_stale_seconds (1 s): now the dead owner's job counts as stalled
        runner.start_recovery()
        deadline = time.monotonic() + 120
        while pipeline.job_summary(svc, job_id)["status"] != "done":
            assert time.monotonic() < deadline, pipeline.job_summary(svc, job_id)
            time.sleep(0.1)
        assert pipeline.job_summary(svc, job_id)["indexed"] == 12
        # a job this runner holds is kept fresh by its heartbeat, so no other process takes it
        other = pipeline.create_job(svc, [str(tmp_path / "pics")], "other")
        runner.heartbeat.hold(other)
        time.sleep(1.5)
        assert other not in [j for j, _ in pipeline.stalled_jobs(svc, 1)]
        runner.heartbeat.release(other)
    finally:
        runner.close()


def test_two_sweepers_claim_a_stalled_job_once(tmp_path):
    svc = Services(load_settings(home=tmp_path / "home"))
    (tmp_path / "pics").mkdir()
    job_id = pipeline.create_job(svc, [str(tmp_path / "pics")], "pics")
    with svc.session() as db:
        db.execute(update(Job).where(Job.id == job_id).values(status="running", updated_at=pipeline.utcnow()
                                                              - pipeline.timedelta(seconds=60)))
        db.commit()
    stalled = pipeline.stalled_jobs(svc, 30)
    assert [j for j, _ in stalled] == [job_id]
    _, seen = stalled[0]
    assert [pipeline.claim(svc, job_id, seen), pipeline.claim(svc, job_id, seen)] == [True, False]
    assert pipeline.stalled_jobs(svc, 30) == []  # claimed: fresh again


def test_a_worker_sweep_requeues_a_stalled_jobs_batches(tmp_path, monkeypatch, model):  # noqa: F811
    from ingest import worker

    write_images(tmp_path / "pics", 6)
    settings = load_settings(home=tmp_path / "home", batch_size=4, job_stale_seconds=1)
    svc = Services(settings)
    svc._model = model
    job_id = pipeline.create_job(svc, [str(tmp_path / "pics")], "pics")
    pipeline.scan(svc, job_id)
    queued = []
    monkeypatch.setattr(worker, "_svc", lambda: svc)
    monkeypatch.setattr(worker.embed_task, "delay", lambda jid, ids: queued.append((jid, ids)))
    assert worker.sweep() == []  # not stale yet (workers wait 4x the stale time)
    with svc.session() as db:
        db.execute(update(Job).where(Job.id == job_id).values(updated_at=pipeline.utcnow()
                                                              - pipeline.timedelta(seconds=5)))
        db.commit()
    assert worker.sweep() == [job_id]
    assert [jid for jid, _ in queued] == [job_id, job_id] and sorted(sum((ids for _, ids in queued), [])) == \
        sorted(pipeline.pending_work(svc, job_id)[1][job_id])
    for jid, ids in queued:
        worker._embed(jid, ids)
    assert pipeline.job_summary(svc, job_id)["status"] == "done"


def test_a_full_disk_stops_the_job_cleanly_and_the_next_ingest_finishes_it(tmp_path, monkeypatch, model):  # noqa: F811
    """Below MIN_FREE_MB the job stops with a message naming the folder and the fix (the memory-mapped WAL would
    otherwise die of SIGBUS); its files stay pending, not failed, and the next ingest indexes them all."""
    write_images(tmp_path / "pics", 10)
    svc = Services(load_settings(home=tmp_path / "home", batch_size=4))
    svc._model = model
    job = pipeline.run_inline(svc, [str(tmp_path / "pics")], "pics")
    assert job["indexed"] == 10
    write_images(tmp_path / "pics", 16, seed=1)  # 16 new pictures (img0000..img0015 rewritten, 6 more)
    monkeypatch.setattr(pipeline, "MIN_FREE_MB", 10**9)
    job = pipeline.run_inline(svc, [str(tmp_path / "pics")], "pics")
    assert job["status"] == "failed" and "MB free" in job["error"] and str(svc.settings.home) in job["error"]
    assert job["failed"] == 0
    monkeypatch.setattr(pipeline, "MIN_FREE_MB", 96)
    job = pipeline.run_inline(svc, [str(tmp_path / "pics")], "pics")
    assert job["status"] == "done", job
    with svc.session() as db:
        statuses = db.execute(select(Asset.status, func.count()).group_by(Asset.status)).all()
    assert dict(statuses) == {"indexed": 16}
