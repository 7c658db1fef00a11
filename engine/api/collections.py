"""GET /collections; POST /collections/{name} (create); GET /collections/{name}/map (2-D embedding map);
POST /collections/{name}/ingest (server folders) and /collections/{name}/upload (files).

Folder ingest reads server paths: absolute, without '..', inside the data directory or the collection's root,
unless the key has write access to every collection ("*"). Uploads are stored under
<data dir>/media/uploads/<collection>/ with sanitized names, then ingested like any other job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from engine.services import Services
from ingest import pipeline

from .auth import ALL, READ, WRITE, Principal, PrincipalDep
from .deps import CollectionName, EngineDep, ServicesDep, find_collection

router = APIRouter(prefix="/collections", tags=["collections"])

MAX_PATHS = 100
MAX_FILES = 256


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=MAX_PATHS, description="absolute server paths: folders, files or PAIRS.jsonl")
    ocr: bool = Field(False, description="also read the text in images")


@router.get("")
def collections(svc: ServicesDep, principal: PrincipalDep) -> dict:
    """The collections this key may read, with their asset counts by status."""
    report = pipeline.status_report(svc, jobs=0, errors=0)
    readable = set(principal.readable(report["known"]))
    return {"collections": [c for c in report["collections"] if c["name"] in readable]}


@router.post("/{name}", status_code=201)
def create(name: CollectionName, engine: EngineDep, principal: PrincipalDep) -> dict:
    """Create an empty collection (its root is its upload folder); an existing one is returned as it is."""
    principal.require(name, WRITE)
    return engine.create_collection(name)


@router.get("/{name}/map")
def embedding_map(name: CollectionName, engine: EngineDep, principal: PrincipalDep,
                  limit: Annotated[int, Query(ge=1, le=5000, description="points drawn at most")] = 2000,
                  include_synthetic: Annotated[bool, Query(description="also generated images")] = False) -> dict:
    """A 2-D PCA map of the collection's image vectors with small thumbnails (JPEG data URLs)."""
    principal.require(name, READ)
    if find_collection(engine.svc, name) is None:
        raise HTTPException(404, f"no collection named {name!r}; list them with GET /collections")
    return engine.embedding_map(name, limit=limit, include_synthetic=include_synthetic)


@router.post("/{name}/ingest", status_code=202)
def ingest(name: CollectionName, body: IngestRequest, svc: ServicesDep, principal: PrincipalDep,
           request: Request) -> dict:
    """Start a job over server paths; poll GET /jobs/{id}."""
    principal.require(name, WRITE)
    paths = [_checked_path(svc, principal, name, raw, f"paths[{i}]") for i, raw in enumerate(body.paths)]
    job_id = request.app.state.ingest.start(paths, name, ocr=body.ocr)
    return pipeline.job_summary(svc, job_id)


@router.post("/{name}/upload", status_code=202)
def upload(name: CollectionName, files: Annotated[list[UploadFile], File(description="images")],
           engine: EngineDep, principal: PrincipalDep, ocr: Annotated[bool, Form()] = False) -> dict:
    """Store uploaded images in the data directory and start a job over them; poll GET /jobs/{id}.
    One refused file refuses the whole request, and none of its files are kept."""
    principal.require(name, WRITE)
    if not files or len(files) > MAX_FILES:
        raise HTTPException(400, f"files: give 1..{MAX_FILES} images, got {len(files)}")
    job_id = engine.ingest_uploads(name, [(f.filename, f.file) for f in files], ocr=ocr)
    return pipeline.job_summary(engine.svc, job_id)


def _checked_path(svc: Services, principal: Principal, collection: str, raw: str, field: str) -> str:
    """An absolute path without '..', inside the data directory or the collection's root (or any, for '*' write)."""
    if "\x00" in raw or not Path(raw).is_absolute() or ".." in Path(raw).parts:
        raise HTTPException(400, f"{field}: {raw!r} must be an absolute server path without '..'")
    path = Path(raw).resolve()
    if principal.can(ALL, WRITE):
        return str(path)
    coll = find_collection(svc, collection)
    roots = [svc.settings.home.resolve()] + ([Path(coll.root).resolve()] if coll else [])
    if not any(path.is_relative_to(r) for r in roots):
        raise HTTPException(403, f"{field}: {raw!r} is outside the data directory and the collection root; "
                                 "only a key with write access to every collection ('*') may ingest other folders")
    return str(path)
