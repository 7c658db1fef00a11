"""POST /search (by text or by an indexed asset) and POST /search/image (by an uploaded image)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .auth import READ, PrincipalDep
from .deps import MAX_ID, EngineDep, load_asset
from .uploads import save_upload

router = APIRouter(prefix="/search", tags=["search"])

CollectionFilter = Annotated[str | None, Field(
    min_length=1, max_length=200, description="only this collection; omitted = every collection (needs a '*' key)")]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=2000, description="what to look for")
    asset_id: int | None = Field(None, ge=1, le=MAX_ID, description="more like this indexed image")
    collection: CollectionFilter = None
    k: int = Field(10, ge=1, le=1000, description="number of hits")
    include_synthetic: bool = Field(False, description="also generated images")

    @model_validator(mode="after")
    def _one_query(self) -> "SearchRequest":
        if (self.text is None) == (self.asset_id is None):
            raise ValueError('give exactly one of "text" or "asset_id"')
        return self


class Hit(BaseModel):
    id: int | None
    score: float
    path: str | None
    caption: str | None
    format: str | None
    collection: str | None
    synthetic: bool
    near_dup_group: int | None


class SearchResult(BaseModel):
    hits: list[Hit]
    no_match: bool


@router.post("", response_model=SearchResult)
def search(body: SearchRequest, engine: EngineDep, principal: PrincipalDep) -> dict:
    """Images nearest to a text or to an indexed image ("more like this"), best first."""
    principal.require(body.collection, READ)
    if body.asset_id is not None:
        asset, coll = load_asset(engine.svc, body.asset_id)
        principal.require(coll.name, READ)
        if asset.media != "image":
            raise HTTPException(400, f"asset_id: asset {body.asset_id} is a text document, not an image")
    return engine.search(text=body.text, asset_id=body.asset_id, collection=body.collection, k=body.k,
                         include_synthetic=body.include_synthetic)


@router.post("/image", response_model=SearchResult)
def search_image(
    file: Annotated[UploadFile, File(description="the query image")],
    engine: EngineDep,
    principal: PrincipalDep,
    collection: Annotated[str | None, Form(min_length=1, max_length=200)] = None,
    k: Annotated[int, Form(ge=1, le=1000)] = 10,
    include_synthetic: Annotated[bool, Form()] = False,
) -> dict:
    """Images nearest to an uploaded image (kept only for the request)."""
    principal.require(collection, READ)
    with tempfile.TemporaryDirectory(prefix="omnibridge-query-") as tmp:
        path = save_upload(file, Path(tmp), engine.svc.settings)
        return engine.search(image=path, collection=collection, k=k, include_synthetic=include_synthetic)
