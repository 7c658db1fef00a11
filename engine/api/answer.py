"""POST /answer: a grounded answer with citations, as JSON or streamed (text/plain or server-sent events)."""

from __future__ import annotations

import json
from itertools import chain
from typing import Iterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from engine.answer import Answer

from .auth import READ, PrincipalDep
from .deps import EngineDep
from .paths import path_shower

router = APIRouter(tags=["answer"])


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000, description="a question about the collection's images")
    collection: str | None = Field(None, min_length=1, max_length=200,
                                   description="only this collection; omitted = every collection (needs a '*' key)")
    k: int = Field(5, ge=1, le=20, description="images retrieved as evidence")


class AnswererStatus(BaseModel):
    answerer: str = Field(description="the configured answerer (OMNIBRIDGE_ANSWERER)")
    state: str = Field(description="not loaded, loading, ready or failed")
    error: str | None = Field(None, description="why loading failed")


@router.get("/answer/status", response_model=AnswererStatus,
            responses={503: {"model": AnswererStatus, "description": "still loading"}})
def answer_status(engine: EngineDep):
    """Whether answers are ready: the API loads the search model and the answerer in the background at start.
    200 once ready (or failed: then `error` says why), 503 while loading. No key needed."""
    status = engine.answerer_status()
    return status if status["state"] in ("ready", "failed") else JSONResponse(status, status_code=503)


@router.post("/answer", responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}})
def answer(body: AnswerRequest, engine: EngineDep, principal: PrincipalDep, request: Request,
           stream: bool = Query(False, description="stream the text as it is written; the final JSON comes last")):
    """{answer, citations, abstained, evidence}. With ?stream=true: text pieces, then the same JSON as the last
    line (text/plain), or `data:` events then one `event: answer` (Accept: text/event-stream)."""
    principal.require(body.collection, READ)
    items = engine.stream_answer(body.question, collection=body.collection, k=body.k)
    shown = _shown_answer(engine, principal, body.collection)
    if not stream:
        *_, final = items
        return shown(final.to_dict())
    first = next(items)  # retrieval runs, and bad input fails as a 4xx, before the response starts
    items = chain([first], items)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_events(items, shown), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return StreamingResponse(_plain(items, shown), media_type="text/plain; charset=utf-8")


def _shown_answer(engine, principal, collection: str | None):
    """The answer's evidence with image paths as this caller may see them (engine.api.paths)."""
    show = path_shower(engine.svc, principal)
    return lambda d: {**d, "evidence": [{**e, "image_path": show(e.get("image_path"), collection)}
                                        for e in d["evidence"]]}


def _plain(items: Iterator[str | Answer], shown) -> Iterator[str]:
    for item in items:
        yield "\n" + json.dumps(shown(item.to_dict())) + "\n" if isinstance(item, Answer) else item


def _events(items: Iterator[str | Answer], shown) -> Iterator[str]:
    for item in items:
        if isinstance(item, Answer):
            yield f"event: answer\ndata: {json.dumps(shown(item.to_dict()))}\n\n"
        else:
            yield "".join(f"data: {line}\n" for line in item.split("\n")) + "\n"
