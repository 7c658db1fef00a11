"""GET /jobs/{id}: an ingestion job's status and counters."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ingest import pipeline

from .auth import READ, PrincipalDep
from .deps import JobId, ServicesDep

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}")
def job(job_id: JobId, svc: ServicesDep, principal: PrincipalDep) -> dict:
    """Status (queued, scanning, running, finalizing, done, failed), counters and the first failed files."""
    try:
        summary = pipeline.job_summary(svc, job_id, errors=20)
    except ValueError:
        raise HTTPException(404, f"no job with id {job_id}") from None
    principal.require(summary["collection"], READ)
    return summary
