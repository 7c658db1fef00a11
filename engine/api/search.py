"""POST /search (by text or by an indexed asset) and POST /search/image (by an uploaded image)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from .auth import READ, PrincipalDep
from .deps import MAX_ID, EngineDep, load_asset
from .paths import path_shower
from .uploads import save_upload

router = APIRouter(prefix="/search", tags=["search"])

CollectionFilter = Annotated[str | None, Field(
    min_length=1, max_length=200, description="only this collection; omitted = every collection (needs a '*' key)")]


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: list[Annotated[str, Field(min_length=1, max_length=16)]] | None = Field(
        None, max_length=20, description="only these formats (JPEG, PNG, ...)")
    tags: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, max_length=50, description="only images with any of these tags")
    min_width: int | None = Field(None, ge=0, le=1_000_000)
    min_height: int | None = Field(None, ge=0, le=1_000_000)
    since: str | None = Field(None, max_length=32, description="files modified on or after (ISO date)")
    until: str | None = Field(None, max_length=32, description="files modified up to (ISO date, inclusive)")


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionFilter = None
    k: int = Field(10, ge=1, le=1000, description="number of hits")
    offset: int = Field(0, ge=0, le=100_000, description="skip this many hits (paging)")
    filters: Filters | None = None
    include_synthetic: StrictBool = Field(False, description="also generated images")
    collapse: StrictBool = Field(True, description="near-duplicates as one hit with a count")
    target: Literal["images", "texts"] = Field("images", description="find images, or captions/OCR/documents")
    mode: Literal["hybrid", "vector", "keyword"] = Field(
        "hybrid", description="hybrid: aligned vectors fused with keyword (BM25) matches; or one side only")
    min_relevance: float | None = Field(
        None, ge=0, le=1, description="return hits down to this score; default: the no-match threshold")

    def engine_kwargs(self) -> dict:
        return {"collection": self.collection, "k": self.k, "offset": self.offset,
                "filters": self.filters.model_dump() if self.filters else None,
                "include_synthetic": self.include_synthetic, "collapse": self.collapse, "target": self.target,
                "mode": self.mode, "min_relevance": self.min_relevance}


class SearchRequest(SearchOptions):
    text: str | None = Field(None, min_length=1, max_length=2000, description="what to look for")
    asset_id: int | None = Field(None, ge=1, le=MAX_ID, description="more like this indexed image")

    @model_validator(mode="after")
    def _one_query(self) -> "SearchRequest":
        if (self.text is None) == (self.asset_id is None):
            raise ValueError('give exactly one of "text" or "asset_id"')
        return self


class Hit(BaseModel):
    id: int | None = Field(description="asset id (images) or text id (texts)")
    score: float = Field(description="calibrated relevance in 0..1")
    likely: bool = Field(False, description="above the line: the score reaches the threshold of a likely match")
    similarity: float | None = Field(None, description="raw similarity of the vectors")
    keyword_score: float | None = Field(None, description="BM25 score of the keyword match, if any")
    coverage: float = Field(0.0, description="share of the query's terms in the hit's texts")
    matched: str = Field("visual", description="visual, keyword or both")
    path: str | None = None
    caption: str | None = None
    collection: str | None = None
    synthetic: bool = False
    format: str | None = None
    width: int | None = None
    height: int | None = None
    tags: list[str] = []
    near_dup_group: int | None = None
    duplicates: int = 0
    asset_id: int | None = Field(None, description="texts: the asset the text belongs to")
    kind: str | None = Field(None, description="texts: caption, alt, ocr or document")
    content: str | None = Field(None, description="texts: the text")


class SearchResult(BaseModel):
    hits: list[Hit]
    no_match: bool = Field(description="true when nothing reaches the threshold of a likely match")
    best_score: float | None = Field(description="the best relevance found, returned or not")
    threshold: float
    mode: str
    target: str
    calibrated: bool
    notes: list[str]


@router.post("", response_model=SearchResult)
def search(body: SearchRequest, engine: EngineDep, principal: PrincipalDep) -> dict:
    """Images nearest to a text or to an indexed image ("more like this"), best first."""
    principal.require(body.collection, READ)
    if body.asset_id is not None:
        asset, coll = load_asset(engine.svc, body.asset_id)
        principal.require(coll.name, READ)
        if asset.media != "image":
            raise HTTPException(400, f"asset_id: asset {body.asset_id} is a text document, not an image")
    return _shown(engine.search(text=body.text, asset_id=body.asset_id, **body.engine_kwargs()), engine, principal)


@router.post("/image", response_model=SearchResult)
def search_image(
    file: Annotated[UploadFile, File(description="the query image")],
    engine: EngineDep,
    principal: PrincipalDep,
    collection: Annotated[str | None, Form(min_length=1, max_length=200)] = None,
    k: Annotated[int, Form(ge=1, le=1000)] = 10,
    offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
    filters: Annotated[str | None, Form(max_length=4000, description='JSON, as in POST /search: {"format": ["PNG"]}')] = None,
    include_synthetic: Annotated[bool, Form()] = False,
    collapse: Annotated[bool, Form()] = True,
    target: Annotated[Literal["images", "texts"], Form()] = "images",
    min_relevance: Annotated[float | None, Form(ge=0, le=1)] = None,
) -> dict:
    """Images (or texts) nearest to an uploaded image (kept only for the request)."""
    principal.require(collection, READ)
    try:
        parsed = Filters.model_validate_json(filters) if filters else None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "filters"
        raise HTTPException(422, f"filters: {where}: {first['msg']}") from None
    with tempfile.TemporaryDirectory(prefix="omnibridge-query-") as tmp:
        path = save_upload(file, Path(tmp), engine.svc.settings)
        return _shown(engine.search(image=path, collection=collection, k=k, offset=offset,
                                    filters=parsed.model_dump() if parsed else None,
                                    include_synthetic=include_synthetic, collapse=collapse, target=target,
                                    min_relevance=min_relevance), engine, principal)


def _shown(result: dict, engine, principal) -> dict:
    """Hits with their paths as this caller may see them (engine.api.paths)."""
    show = path_shower(engine.svc, principal)
    return {**result, "hits": [{**h, "path": show(h.get("path"), h.get("collection"))} for h in result["hits"]]}
