"""Builds the app: one Engine per app (models load once per process), routers, and errors mapped to statuses.

    uvicorn engine.api.main:create_app --factory --port 8000

Errors: a bad value -> 400 (malformed bodies -> 422), an unknown id -> 404, a missing/unknown key -> 401, a missing
scope -> 403, an oversized upload or request body -> 413, no generator or an unreachable store/database -> 503.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi_offline import FastAPIOffline
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DatabaseError as SQLDatabaseError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.db import DatabaseError
from engine.engine import Engine
from engine.generate import GeneratorUnavailable
from engine.qdrant_store import QdrantUnavailable
from engine.services import Services
from engine.shared_store import StoreUnavailable
from engine.vectors import StoreDamaged
from ingest.uploads import UploadTooLarge

from . import answer, assets, collections, generate, health, jobs, search
from .limits import RequestSizeLimit


def _status(code: int):
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


MULTIPART_HELP = ("the multipart form could not be read: a part's headers are over 4 KiB (a file name of thousands of "
                  "characters does that) or the body is cut or malformed; send each file with a name under 255 "
                  "characters, as multipart/form-data")


async def _http_error(request: Request, exc: StarletteHTTPException):
    """Starlette's errors as usual, but its bare "Invalid multipart data." says what to change."""
    if exc.status_code == 400 and exc.detail == "Invalid multipart data.":
        exc = StarletteHTTPException(400, MULTIPART_HELP)
    return await http_exception_handler(request, exc)


def _database_failed(url: str):
    async def handler(_request: Request, exc: SQLDatabaseError) -> JSONResponse:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return JSONResponse({"detail": f"the metadata database failed ({reason}); the operator checks it with "
                                       "`omnibridge doctor` and restores a backup with `omnibridge restore DIR`"},
                            status_code=503)

    return handler


def create_app(services: Services | None = None) -> FastAPI:
    """The API over `services` (default: the process's, from the OMNIBRIDGE_* settings)."""
    engine = Engine(services)
    engine.warm_answerer()  # the model and the answerer load in the background: GET /answer/status says when ready

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start_background()  # resume the ingest jobs a killed process left
        yield
        engine.ingest_runner.close()

    # /docs and /redoc with Swagger UI and ReDoc served from the installed fastapi-offline package, not a CDN
    app = FastAPIOffline(title="OmniBridge Search", summary="Multimodal image search: find, answer, generate similar.",
                         lifespan=lifespan)
    app.state.engine = engine
    app.state.ingest = engine.ingest_runner  # jobs start where the Engine starts them (ingest.runner)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ValueError, _status(400))  # MediaError, SourceError, Engine checks: name the value
    app.add_exception_handler(UploadTooLarge, _status(413))
    app.add_exception_handler(GeneratorUnavailable, _status(503))
    for unavailable in (StoreUnavailable, QdrantUnavailable, DatabaseError, StoreDamaged):
        app.add_exception_handler(unavailable, _status(503))
    app.add_exception_handler(SQLDatabaseError, _database_failed(engine.svc.settings.db_url))
    for module in (health, search, answer, generate, assets, collections, jobs):
        app.include_router(module.router)
    app.add_middleware(RequestSizeLimit, max_bytes=int(engine.svc.settings.max_request_mb * 2**20),
                       read_timeout=engine.svc.settings.request_timeout)
    return app
