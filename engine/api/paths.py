"""Server paths as a caller may see them: whole for a key with write access to every collection (the operator),
relative to the collection's folders for everyone else (engine.access.shown_path), so no server layout leaks."""

from __future__ import annotations

from collections.abc import Callable

from engine.access import display_bases, shown_path
from engine.services import Services

from .auth import ALL, WRITE, Principal

Shower = Callable[[str | None, str | None], str | None]  # (path, collection) -> what the caller sees


def path_shower(svc: Services, principal: Principal) -> Shower:
    if principal.can(ALL, WRITE):
        return lambda path, _collection: path
    bases: dict[str | None, list] = {}

    def show(path: str | None, collection: str | None) -> str | None:
        if collection not in bases:
            with svc.session() as db:
                bases[collection] = display_bases(db, svc.settings, collection) if collection else []
        return shown_path(path, bases[collection])

    return show


def show_job(job: dict, show: Shower) -> dict:
    """A job summary with its source and its failed files' paths as the caller may see them."""
    first, sep, more = (job.get("source") or "").partition(" (+")
    out = {**job, "source": (show(first, job["collection"]) or "") + (sep + more if sep else "")}
    if "errors" in job:
        out["errors"] = [{**e, "path": show(e["path"], job["collection"])} for e in job["errors"]]
    return out
