"""Ingestion jobs started by the Engine (API, UI): in this process on one background thread (the embedded default),
or queued to the Celery workers when a real broker is configured. Either way the job's state lives in SQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from engine.services import Services
from . import pipeline


class IngestRunner:
    """Starts jobs: one at a time on a background thread (embedded broker), else via ingest.worker.submit."""

    def __init__(self, svc: Services):
        self.svc = svc
        self._pool: ThreadPoolExecutor | None = None

    def start(self, paths: list[str], collection: str, ocr: bool = False) -> int:
        if not self.svc.settings.embedded_broker:
            from .worker import submit

            return submit(paths, collection, ocr=ocr)
        job_id = pipeline.create_job(self.svc, paths, collection, ocr=ocr)  # a bad source raises here (ValueError)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnibridge-ingest")
        self._pool.submit(pipeline.run_job, self.svc, job_id)
        return job_id

    def close(self) -> None:
        """Stop taking jobs; queued ones stay `queued` in SQL for the next worker's recovery."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
