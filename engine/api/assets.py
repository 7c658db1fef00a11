"""GET /assets/{id} (metadata), /assets/{id}/thumbnail (JPEG) and /assets/{id}/original (the file).

Files are served only from inside a path their own collection ingested (engine.access.served_file), after
resolving symlinks and '..': a row whose path points anywhere else is refused (403)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response

from engine.access import served_file
from engine.db import Asset, Collection
from engine.services import Services
from ingest.media import thumbnail_jpeg

from .auth import READ, PrincipalDep
from .deps import AssetId, EngineDep, load_asset
from .paths import path_shower

router = APIRouter(prefix="/assets", tags=["assets"])


def served_path(svc: Services, asset: Asset, collection: Collection) -> Path:
    """The asset's file, if it lies inside a path its collection ingested; else 403 (404: gone)."""
    try:
        with svc.session() as db:
            path = served_file(db, svc.settings, asset.uri, collection)
    except (OSError, ValueError):
        raise HTTPException(404, f"the file of asset {asset.id} is gone; ingest its collection again") from None
    if path is None:
        raise HTTPException(403, f"asset {asset.id}: its file lies outside the folders its collection ingested, "
                                 "so it is not served")
    return path


@router.get("/{asset_id}")
def asset(asset_id: AssetId, engine: EngineDep, principal: PrincipalDep) -> dict:
    """Metadata of an asset, its texts (captions, tags, OCR, ...) and its lineage when it was generated."""
    _, coll = load_asset(engine.svc, asset_id)
    principal.require(coll.name, READ)
    info = engine.asset_info(asset_id)
    return {**info, "path": path_shower(engine.svc, principal)(info["path"], coll.name)}


@router.get("/{asset_id}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG of at most size x size"}})
def thumbnail(asset_id: AssetId, engine: EngineDep, principal: PrincipalDep,
              size: Annotated[int, Query(ge=16, le=1024, description="longest side in pixels")] = 256) -> Response:
    row, coll = load_asset(engine.svc, asset_id)
    principal.require(coll.name, READ)
    if row.media != "image":
        raise HTTPException(404, f"asset {asset_id} is a text document; it has no thumbnail")
    data = thumbnail_jpeg(served_path(engine.svc, row, coll), size, engine.svc.settings.max_image_pixels)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{asset_id}/original", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the file as ingested"}})
def original(asset_id: AssetId, engine: EngineDep, principal: PrincipalDep) -> FileResponse:
    row, coll = load_asset(engine.svc, asset_id)
    principal.require(coll.name, READ)
    path = served_path(engine.svc, row, coll)
    return FileResponse(path, filename=path.name)
