"""The Celery app: the one worker entry point of ingestion.

    celery -A ingest.worker worker --loglevel info          # production: OMNIBRIDGE_BROKER_URL=redis://...
    omnibridge worker                                        # the same, from our CLI

Embedded default: the broker is an SQLite file in OMNIBRIDGE_HOME and `omnibridge ingest` runs a worker inside its
own process (`in_process_worker`), so nothing needs to be started. Tasks take ids only; the state lives in SQL.
A worker that starts (or restarts after a crash) first re-queues what interrupted jobs left (`recover`).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from celery import Celery, signals
from celery.worker import WorkController
from tenacity import Retrying, retry_if_not_exception_type, stop_after_attempt, wait_exponential

from engine.services import get_services
from engine.settings import Settings, get_settings

from . import pipeline

log = logging.getLogger(__name__)

SCAN, EMBED = "omnibridge.ingest.scan", "omnibridge.ingest.embed"
QUEUE = "omnibridge-ingest"

app = Celery("omnibridge")


def configure(settings: Settings) -> Celery:
    """Point the app at the configured broker (called on import with the environment's settings)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_url=settings.celery_broker,
        result_backend=settings.celery_backend,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        task_acks_late=False,  # redelivery is not needed: SQL knows what is left (see recover)
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_ignore_result=True,  # outcomes live in SQL (jobs, assets), not in Celery results
    )
    app.conf.omnibridge_settings = settings
    return app


def _settings() -> Settings:
    return app.conf.get("omnibridge_settings") or get_settings()


def _svc():
    return get_services(_settings())


def _retrying() -> Retrying:
    """Transient trouble (a busy database, the store's owner changing hands) is retried inside the task: no
    re-queueing, so it works the same on every broker."""
    return Retrying(stop=stop_after_attempt(4), wait=wait_exponential(multiplier=0.5, max=8), reraise=True,
                    retry=retry_if_not_exception_type((pipeline.SourceError, pipeline.DiskFull)),
                    before_sleep=lambda rs: log.warning("retrying after: %s", rs.outcome.exception()))


_beat: pipeline.Heartbeat | None = None


def _heartbeat() -> pipeline.Heartbeat:
    """This process's heartbeat: keeps the jobs its tasks work on fresh, so no other worker's sweep takes them."""
    global _beat
    if _beat is None:
        svc = _svc()
        _beat = pipeline.Heartbeat(svc, interval=svc.settings.job_stale_seconds / 4)
    return _beat


@app.task(name=SCAN, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def scan_task(job_id: int) -> int:
    """Walk the job's source, then queue its pending assets in batches."""
    with _heartbeat().holding(job_id):
        return _scan(job_id)


def _scan(job_id: int) -> int:
    svc = _svc()
    try:
        pipeline.check_free_space(svc)
        pending = _retrying()(pipeline.scan, svc, job_id)
    except (pipeline.SourceError, pipeline.DiskFull) as e:
        pipeline.fail_job(svc, job_id, str(e))
        return 0
    except Exception as e:  # not a bad file: the database or the vector store, for good
        log.exception("scan of job %s failed", job_id)
        pipeline.fail_job(svc, job_id, f"scan failed: {e}")
        return 0
    size = svc.settings.batch_size
    for i in range(0, len(pending), size):
        embed_task.delay(job_id, pending[i:i + size])
    if not pending:
        pipeline.try_finalize(svc, job_id)
    return len(pending)


@app.task(name=EMBED, soft_time_limit=900, time_limit=960)
def embed_task(job_id: int, asset_ids: list[int]) -> dict:
    """Embed one batch; a file that fails is recorded and never stops the job."""
    with _heartbeat().holding(job_id):
        return _embed(job_id, asset_ids)


def _embed(job_id: int, asset_ids: list[int]) -> dict:
    svc = _svc()
    try:
        counts = _retrying()(pipeline.embed, svc, job_id, asset_ids)
    except pipeline.DiskFull as e:  # not the files' fault: they stay pending, and the next ingest resumes them
        pipeline.fail_job(svc, job_id, str(e))
        return {"indexed": 0, "failed": 0}
    except Exception as e:  # not a bad file (those are recorded inside embed): the store or the database
        log.exception("batch of job %s failed for good", job_id)
        counts = pipeline.fail_assets(svc, job_id, asset_ids, f"internal error while embedding: {e}")
    pipeline.try_finalize(svc, job_id)
    return counts


def recover() -> dict:
    """Re-queue what interrupted jobs left: rescans, pending batches, unfinished finalizations."""
    svc = _svc()
    rescan, work, finalize = pipeline.pending_work(svc)
    _queue(svc, rescan, work, finalize)
    if rescan or work:
        log.info("recovered %d jobs to rescan and %d with pending assets", len(rescan), len(work))
    return {"rescan": rescan, "pending": {str(k): len(v) for k, v in work.items()}, "finalized": finalize}


def sweep() -> list[int]:
    """Re-queue the work of jobs whose worker died while this one lives (a stalled job needs no new process).
    Workers leave batches waiting in the queue untouched, so a job counts as stalled only after 4x the stale time;
    a queued job (its scan task may be lost with the broker) after 10x."""
    svc = _svc()
    stale = svc.settings.job_stale_seconds
    taken = []
    for statuses, factor in ((("scanning", "running", "finalizing"), 4), (("queued",), 10)):
        for job_id in pipeline.take_stalled(svc, stale * factor, statuses):  # another worker may take some first
            taken.append(job_id)
            log.warning("re-queueing stalled ingest job %s", job_id)
            _queue(svc, *pipeline.pending_work(svc, job_id))
    return taken


def _sweep_forever(stop: threading.Event) -> None:
    interval = _settings().job_stale_seconds
    while not stop.wait(interval):
        try:
            sweep()
        except Exception:  # the database is briefly unreachable: the next sweep tries again
            log.warning("sweep for stalled jobs failed", exc_info=True)


_sweeping = threading.Event()  # set: stop sweeping


@signals.worker_ready.connect
def _on_ready(sender=None, **_) -> None:
    try:
        recover()
    except Exception:  # a recovery problem must not keep the worker from serving new jobs
        log.exception("recovery of interrupted jobs failed")
    _sweeping.clear()
    threading.Thread(target=_sweep_forever, args=(_sweeping,), daemon=True, name="omnibridge-sweep").start()


@signals.worker_shutdown.connect
def _on_shutdown(sender=None, **_) -> None:
    _sweeping.set()


def _queue(svc, rescan: list[int], work: dict[int, list[int]], finalize: list[int]) -> None:
    size = svc.settings.batch_size
    for jid in rescan:
        scan_task.delay(jid)
    for jid, ids in work.items():
        for i in range(0, len(ids), size):
            embed_task.delay(jid, ids[i:i + size])
    for jid in finalize:
        pipeline.try_finalize(svc, jid)


def submit(paths: list[str], collection: str, ocr: bool = False, refused: list[dict] | None = None,
           confine: list[str] | None = None) -> int:
    """Create an ingestion job and queue its scan; returns the job id."""
    job_id = pipeline.create_job(_svc(), paths, collection, ocr=ocr, refused=refused, confine=confine)
    scan_task.delay(job_id)
    return job_id


class _Worker(WorkController):
    def __init__(self, *args, **kwargs):
        self.started = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer):
        self.started.set()


@contextmanager
def in_process_worker(concurrency: int = 1):
    """A real Celery worker on threads inside this process (the embedded default: no worker to start)."""
    from celery.worker import state

    if not logging.getLogger().handlers:  # task errors must reach the terminal, not vanish
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)  # "no hostname" on the SQLite broker URL
    app.finalize()
    app.set_current()
    w = _Worker(app=app, concurrency=concurrency, pool="threads" if concurrency > 1 else "solo",
                loglevel="WARNING", without_heartbeat=True, without_mingle=True, without_gossip=True,
                hostname=f"embedded-{threading.get_ident()}@localhost")
    t = threading.Thread(target=w.start, daemon=True, name="omnibridge-worker")
    t.start()
    if not w.started.wait(60):
        raise RuntimeError(f"the embedded worker did not start; check the broker file under {_settings().home}")
    try:
        yield w
    finally:
        state.should_terminate = 0
        t.join(30)
        state.should_terminate = None


configure(get_settings())
