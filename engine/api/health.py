"""GET /health: the process, the metadata database and the vector store; no key needed.

200 {"status": "ok"} when both answer and the store holds every point the database lists; 200 "degraded" when
points are missing (search works on what is left; `omnibridge doctor --repair` rebuilds them); 503 "unavailable"
when the database or the store cannot be used, with the reason and the fix."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(engine: EngineDep):
    report = engine.health()
    body = {"status": "ok", "database": report["database"], "store": report["store"], "spaces": report["spaces"]}
    if report["database"] != "ok" or report["store"] != "ok":
        return JSONResponse({**body, "status": "unavailable", "problem": report["problem"]}, status_code=503)
    if report["problem"]:
        return {**body, "status": "degraded", "problem": report["problem"]}
    return body
