"""Real worker processes: Celery on the Redis of the project's machines, SIGKILL mid-job, and the embedded CLI
ingesting while other processes search the same Qdrant Edge store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REDIS = "redis://127.0.0.1:6379"


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    """n distinct small pictures (smooth random blobs, so their perceptual hashes differ too)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((96, 96), Image.Resampling.BICUBIC).save(folder / f"img{i:04d}.png")


def env_for(home: Path, **extra) -> dict:
    env = {**os.environ, "OMNIBRIDGE_HOME": str(home), "OMNIBRIDGE_BATCH_SIZE": "8", "HF_HUB_OFFLINE": "1"}
    env.update(extra)
    return env


def cli(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def start_worker(env, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "ingest.worker", "worker", "--pool", "solo",
                             "--loglevel", "INFO", "--queues", "omnibridge-ingest", "-n", f"test-{time.time_ns()}@%h"],
                            env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def job_state(home: Path) -> dict:
    import sqlite3

    with sqlite3.connect(home / "omnibridge.db") as c:
        row = c.execute("select status, indexed, failed from jobs order by id desc limit 1").fetchone()
        return {"status": row[0], "indexed": row[1], "failed": row[2]} if row else {}


@pytest.fixture
def redis_db():
    """A Redis database of our own on the machine's server, emptied before and after."""
    r = redis.Redis.from_url(f"{REDIS}/0")
    r.ping()
    db = 11
    redis.Redis.from_url(f"{REDIS}/{db}").flushdb()
    yield f"{REDIS}/{db}"
    redis.Redis.from_url(f"{REDIS}/{db}").flushdb()


def test_sigkilled_worker_restarts_and_indexes_everything_exactly_once(tmp_path, redis_db):
    home, lib = tmp_path / "home", tmp_path / "lib"
    write_images(lib, 240)
    env = env_for(home, OMNIBRIDGE_BROKER_URL=redis_db)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        submit = subprocess.run([sys.executable, "-c", (
            "import sys; from ingest.worker import submit; print(submit([sys.argv[1]], 'lib'))"), str(lib)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert submit.returncode == 0, submit.stderr
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill it once part of the job is done
            state = job_state(home) if (home / "omnibridge.db").exists() else {}
            if state.get("indexed", 0) >= 16:
                break
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        killed_at = job_state(home)
        assert killed_at["status"] == "running" and 16 <= killed_at["indexed"] < 240, killed_at

        worker = start_worker(env, log)  # recovery re-queues the pending assets
        deadline = time.monotonic() + 300
        while job_state(home)["status"] != "done":
            assert time.monotonic() < deadline, (job_state(home), log.read_text()[-3000:])
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        status = json.loads(cli("status", "--json", env=env).stdout)
        job = status["jobs"][0]
        assert (job["indexed"], job["failed"], job["seen"]) == (240, 0, 240)
        assert status["collections"][0]["assets"] == {"indexed": 240}
        # exactly once: one vector row per asset and as many points as assets (the store is reached through the
        # worker, which owns it)
        import sqlite3

        with sqlite3.connect(home / "omnibridge.db") as c:
            per_asset = c.execute("select count(*), count(distinct asset_id) from vectors").fetchone()
        assert per_asset == (240, 240)
        found = json.loads(cli("search", "--image", str(lib / "img0007.png"), "--k", "300", "--json", env=env).stdout)
        assert len(found["hits"]) == 240
        assert len({h["id"] for h in found["hits"]}) == 240
        assert found["hits"][0]["path"].endswith("img0007.png")
    finally:
        worker.kill()
        worker.wait(30)


def test_embedded_ingest_while_other_processes_search(tmp_path):
    """The embedded default: `omnibridge ingest` owns the Edge store; searches in other processes go through it."""
    home, lib = tmp_path / "home", tmp_path / "lib"
    write_images(lib, 160, seed=1)
    env = env_for(home)
    ingest = subprocess.Popen([sys.executable, "-m", "engine.cli", "ingest", str(lib), "--collection", "lib", "--json"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results, deadline = [], time.monotonic() + 600
    try:
        while ingest.poll() is None or not results:
            assert time.monotonic() < deadline, "the ingest did not finish in 10 minutes"
            r = cli("search", "--image", str(lib / "img0003.png"), "--k", "5", "--json", env=env)
            assert r.returncode == 0, r.stderr
            assert "WouldBlock" not in r.stderr and "lock" not in r.stderr.lower(), r.stderr
            results.append((ingest.poll() is None, json.loads(r.stdout)))
        out, err = ingest.communicate(timeout=300)
    finally:
        ingest.kill()
    assert ingest.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["indexed"] == 160
    assert any(during for during, _ in results), "no search ran while the ingest was running"
    final = json.loads(cli("search", "--image", str(lib / "img0003.png"), "--k", "5", "--json", env=env).stdout)
    assert final["hits"][0]["path"].endswith("img0003.png")
