"""GET /collections; POST /collections/{name} (create); GET /collections/{name}/map (2-D embedding map);
POST /collections/{name}/ingest (server folders) and /collections/{name}/upload (files).

Folder ingest reads server paths under the path policy of engine.access: absolute, without '..', inside the
operator's library roots (OMNIBRIDGE_LIBRARY_ROOTS) or the collection's own upload folder, and for a key scoped to
some collections never a folder another collection uses. Uploads are stored under
<data dir>/media/uploads/<collection>/ with sanitized names, then ingested like any other job; a refused file is
listed among the job's errors while the others are indexed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from engine.access import PathRefused
from ingest import pipeline

from .auth import ALL, READ, WRITE, PrincipalDep
from .deps import CollectionName, EngineDep, ServicesDep, find_collection
from .paths import path_shower, show_job

router = APIRouter(prefix="/collections", tags=["collections"])

MAX_PATHS = 100
MAX_FILES = 256


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=MAX_PATHS, description="absolute server paths: folders, files or PAIRS.jsonl")
    ocr: StrictBool = Field(False, description="also read the text in images (true or false)")


@router.get("")
def collections(svc: ServicesDep, principal: PrincipalDep) -> dict:
    """The collections this key may read, with their asset counts by status."""
    report = pipeline.status_report(svc, jobs=0, errors=0)
    readable = set(principal.readable(report["known"]))
    show = path_shower(svc, principal)
    return {"collections": [{**c, "root": show(c["root"], c["name"])} for c in report["collections"]
                            if c["name"] in readable]}


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
    result = engine.embedding_map(name, limit=limit, include_synthetic=include_synthetic)
    show = path_shower(engine.svc, principal)
    return {**result, "points": [{**p, "path": show(p["path"], name)} for p in result["points"]]}


@router.post("/{name}/ingest", status_code=202)
def ingest(name: CollectionName, body: IngestRequest, engine: EngineDep, principal: PrincipalDep) -> dict:
    """Start a job over server folders in the library roots (OMNIBRIDGE_LIBRARY_ROOTS); poll GET /jobs/{id}."""
    principal.require(name, WRITE)
    try:
        job_id = engine.ingest_server_paths(name, body.paths, ocr=body.ocr, everywhere=principal.can(ALL, WRITE))
    except PathRefused as e:
        raise HTTPException(403 if e.forbidden else 400, str(e)) from None
    return show_job(pipeline.job_summary(engine.svc, job_id, errors=20), path_shower(engine.svc, principal))


@router.post("/{name}/upload", status_code=202)
def upload(name: CollectionName, files: Annotated[list[UploadFile], File(description="images")],
           engine: EngineDep, principal: PrincipalDep, ocr: Annotated[bool, Form()] = False) -> dict:
    """Store uploaded images in the data directory and start a job over them; poll GET /jobs/{id}.
    A refused file (not an image, too large, a bad name) is listed among the job's errors; the others are indexed.
    When every file is refused the request is (400, or 413 when all are too large)."""
    principal.require(name, WRITE)
    if not files or len(files) > MAX_FILES:
        raise HTTPException(400, f"files: give 1..{MAX_FILES} images, got {len(files)}")
    job_id = engine.ingest_uploads(name, [(f.filename, f.file) for f in files], ocr=ocr)
    return show_job(pipeline.job_summary(engine.svc, job_id, errors=MAX_FILES), path_shower(engine.svc, principal))
