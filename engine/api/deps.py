"""Dependencies shared by the routers: the app's one Engine, its Services, and id/name parameter types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy import select

from engine.catalog import COLLECTION_NAME
from engine.db import Asset, Collection
from engine.engine import Engine
from engine.services import Services

MAX_ID = 2**63 - 1  # ids are SQL BIGINT-safe; larger numbers are refused as malformed (422), not looked up


def get_engine(request: Request) -> Engine:
    """The app's Engine: created once by create_app, so models load once per process."""
    return request.app.state.engine


def get_services(engine: Annotated[Engine, Depends(get_engine)]) -> Services:
    return engine.svc


EngineDep = Annotated[Engine, Depends(get_engine)]
ServicesDep = Annotated[Services, Depends(get_services)]
AssetId = Annotated[int, Path(ge=1, le=MAX_ID, description="an asset id (from a search hit)")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="a job id (from an ingest response)")]
CollectionName = Annotated[str, Path(pattern=COLLECTION_NAME, description="letters, digits, '.', '_', '-'")]


def load_asset(svc: Services, asset_id: int) -> tuple[Asset, Collection]:
    """The asset and its collection; 404 naming the id when there is none."""
    with svc.session() as db:
        asset = db.get(Asset, asset_id)
        if asset is None:
            raise HTTPException(404, f"no asset with id {asset_id}; find ids with POST /search")
        return asset, db.get(Collection, asset.collection_id)


def find_collection(svc: Services, name: str) -> Collection | None:
    with svc.session() as db:
        return db.scalar(select(Collection).where(Collection.name == name))
