"""Builds the app: one Engine per app (models load once per process), routers, and errors mapped to statuses.

    uvicorn engine.api.main:create_app --factory --port 8000

Errors: a bad value -> 400 (malformed bodies -> 422), an unknown id -> 404, a missing/unknown key -> 401, a missing
scope -> 403, an oversized upload or request body -> 413, no generator or an unreachable store/database -> 503.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engine.db import DatabaseError
from engine.engine import Engine
from engine.generate import GeneratorUnavailable
from engine.qdrant_store import QdrantUnavailable
from engine.services import Services
from engine.shared_store import StoreUnavailable
from ingest.uploads import UploadTooLarge

from . import answer, assets, collections, generate, health, jobs, search
from .limits import RequestSizeLimit


def _status(code: int):
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


def create_app(services: Services | None = None) -> FastAPI:
    """The API over `services` (default: the process's, from the OMNIBRIDGE_* settings)."""
    engine = Engine(services)
    engine.warm_answerer()  # the model and the answerer load in the background: GET /answer/status says when ready

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.ingest_runner.close()

    app = FastAPI(title="OmniBridge Search", summary="Multimodal image search: find, answer, generate similar.",
                  lifespan=lifespan)
    app.state.engine = engine
    app.state.ingest = engine.ingest_runner  # jobs start where the Engine starts them (ingest.runner)
    app.add_exception_handler(ValueError, _status(400))  # MediaError, SourceError, Engine checks: name the value
    app.add_exception_handler(UploadTooLarge, _status(413))
    app.add_exception_handler(GeneratorUnavailable, _status(503))
    for unavailable in (StoreUnavailable, QdrantUnavailable, DatabaseError):
        app.add_exception_handler(unavailable, _status(503))
    for module in (health, search, answer, generate, assets, collections, jobs):
        app.include_router(module.router)
    app.add_middleware(RequestSizeLimit, max_bytes=int(engine.svc.settings.max_request_mb * 2**20))
    return app
