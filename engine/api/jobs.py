"""GET /jobs (a collection's recent jobs) and GET /jobs/{id}: an ingestion job's status and counters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from ingest import pipeline

from .auth import READ, PrincipalDep
from .deps import COLLECTION_NAME, JobId, ServicesDep
from .paths import path_shower, show_job

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("")
def jobs(collection: Annotated[str, Query(pattern=COLLECTION_NAME, description="the collection's jobs")],
         svc: ServicesDep, principal: PrincipalDep,
         n: Annotated[int, Query(ge=1, le=100, description="most recent first")] = 10) -> dict:
    """A collection's most recent ingestion jobs with their status and counters."""
    principal.require(collection, READ)
    show = path_shower(svc, principal)
    return {"jobs": [show_job(j, show) for j in pipeline.status_report(svc, collection, jobs=n, errors=0)["jobs"]]}


@router.get("/{job_id}")
def job(job_id: JobId, svc: ServicesDep, principal: PrincipalDep) -> dict:
    """Status (queued, scanning, running, finalizing, done, failed), counters and the first failed files."""
    try:
        summary = pipeline.job_summary(svc, job_id, errors=20)
    except ValueError:
        raise HTTPException(404, f"no job with id {job_id}") from None
    principal.require(summary["collection"], READ)
    return show_job(summary, path_shower(svc, principal))
