"""POST /assets/{id}/generate-similar: variants of an image (503 until a generator is configured)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from engine.generate import GenerationParams

from .auth import WRITE, PrincipalDep
from .deps import AssetId, EngineDep, load_asset

router = APIRouter(tags=["generate"])


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(4, ge=1, le=16, description="variants")
    seed: int = Field(0, ge=0, le=2**63 - 17, description="variant i uses seed + i")
    strength: float = Field(0.6, gt=0, le=1, description="how far from the source image")
    steps: int = Field(30, ge=1, le=200, description="scheduler steps at strength 1")
    guidance_scale: float = Field(7.5, ge=0, le=50)
    prompt: str | None = Field(None, min_length=1, max_length=1000, description="default: the asset's caption")


@router.post("/assets/{asset_id}/generate-similar", status_code=201,
             responses={503: {"description": "no generator is configured (OMNIBRIDGE_GENERATOR)"}})
def generate_similar(asset_id: AssetId, engine: EngineDep, principal: PrincipalDep,
                     body: GenerateRequest | None = None) -> dict:
    """Saved, recorded with their lineage and indexed as synthetic in the source's collection (needs write)."""
    _, coll = load_asset(engine.svc, asset_id)
    principal.require(coll.name, WRITE)
    body = body or GenerateRequest()
    params = GenerationParams(n=body.n, seed=body.seed, strength=body.strength, steps=body.steps,
                              guidance_scale=body.guidance_scale)
    return {"variants": engine.generate_similar(asset_id, params, prompt=body.prompt)}
