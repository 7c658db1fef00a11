"""Ingestion jobs started by the Engine (API, UI): in this process on one background thread (the embedded default),
or queued to the Celery workers when a real broker is configured. Either way the job's state lives in SQL.

Embedded, the runner also resumes what a dead process left: `start_recovery` sweeps for jobs nobody has touched
for OMNIBRIDGE_JOB_STALE_SECONDS (their owner was killed) at start and then periodically, claims each one
(exactly one live process wins) and finishes it here. Jobs this process holds, queued or running, are kept fresh
by a heartbeat so no other process takes them."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from engine.services import Services

from . import pipeline

log = logging.getLogger(__name__)


class IngestRunner:
    """Starts jobs: one at a time on a background thread (embedded broker), else via ingest.worker.submit."""

    def __init__(self, svc: Services):
        self.svc = svc
        self.stale = svc.settings.job_stale_seconds
        self.heartbeat = pipeline.Heartbeat(svc, interval=self.stale / 4)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self, paths: list[str], collection: str, ocr: bool = False, refused: list[dict] | None = None,
              confine: list[str] | None = None) -> int:
        if not self.svc.settings.embedded_broker:
            from .worker import submit

            return submit(paths, collection, ocr=ocr, refused=refused, confine=confine)
        # a bad source raises here (ValueError)
        job_id = pipeline.create_job(self.svc, paths, collection, ocr=ocr, refused=refused, confine=confine)
        self._submit(job_id, pipeline.run_job)
        return job_id

    def _submit(self, job_id: int, work: Callable[[Services, int], dict]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnibridge-ingest")
            self.heartbeat.hold(job_id)
            self._pool.submit(self._run, work, job_id)

    def _run(self, work: Callable[[Services, int], dict], job_id: int) -> None:
        try:
            work(self.svc, job_id)
        except Exception:  # run_job and resume_job record their failures; anything else is logged, not lost
            log.exception("ingest job %s stopped", job_id)
        finally:
            self.heartbeat.release(job_id)

    # -- recovery ------------------------------------------------------------------------------------------------

    def sweep(self) -> list[int]:
        """Claim and resume the jobs whose owner died; returns their ids (embedded broker only)."""
        taken = pipeline.take_stalled(self.svc, self.stale)
        for job_id in taken:
            log.warning("resuming ingest job %s: no process has worked on it for %g s", job_id, self.stale)
            self._submit(job_id, pipeline.resume_job)
        return taken

    def start_recovery(self) -> None:
        """Sweep now and every stale/2 seconds on a daemon thread (embedded broker; workers sweep for themselves)."""
        if not self.svc.settings.embedded_broker or self._sweeper is not None:
            return
        self._sweeper = threading.Thread(target=self._sweep_forever, daemon=True, name="omnibridge-recovery")
        self._sweeper.start()

    def _sweep_forever(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception as e:  # the database is unreachable or damaged: try again at the next sweep
                log.warning("sweep for interrupted jobs failed: %s", str(e).splitlines()[0])
            if self._stop.wait(self.stale / 2):
                return

    def close(self) -> None:
        """Stop taking jobs; queued ones stay `queued` in SQL and are resumed by the next live process."""
        self._stop.set()
        self.heartbeat.close()
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
