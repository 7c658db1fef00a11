"""GET /health: liveness and the metadata database; no key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from .deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(svc: ServicesDep):
    try:
        with svc.session() as db:
            db.execute(text("SELECT 1"))
    except Exception as e:  # the database is down or cannot be migrated: say so, do not crash
        return JSONResponse({"status": "unavailable", "database": str(e).splitlines()[0]}, status_code=503)
    return {"status": "ok"}
