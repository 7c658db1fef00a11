"""Which server files a caller may ingest, which files are served, and how paths are shown.

Three rules, in one place so the API, the UI's map and the Engine agree:

- **Ingest.** Server folders reach the index only from the operator's library roots (OMNIBRIDGE_LIBRARY_ROOTS) or a
  collection's own upload folder (HOME/media/uploads/NAME). A key scoped to some collections may further ingest only
  folders that hold no other collection's files. The data directory at large (database, vector store, other
  collections' uploads and generated images) is never a source.
- **Serve.** A file is served (original, thumbnail, map picture) only when, symlinks resolved, it lies inside a path
  its own collection ingested (a job's folder or file) or that collection's upload folder.
- **Show.** Callers without write access to every collection see paths relative to their collection's folders, never
  the server's absolute paths.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from .db import Collection, Job
from .settings import Settings


class PathRefused(ValueError):
    """A path the caller may not ingest; `forbidden` tells a scope problem (403) from a malformed path (400)."""

    def __init__(self, message: str, forbidden: bool):
        super().__init__(message)
        self.forbidden = forbidden


def upload_folder(settings: Settings, collection: str) -> Path:
    return (settings.media_dir / "uploads" / collection).resolve()


def generated_folder(settings: Settings) -> Path:
    return (settings.media_dir / "generated").resolve()


def _resolve(raw: str, field: str) -> Path:
    """An absolute path without '..' and NUL, resolved (symlinks followed); PathRefused(400) otherwise."""
    if "\x00" in raw or not Path(raw).is_absolute() or ".." in Path(raw).parts:
        raise PathRefused(f"{field}: {raw!r} must be an absolute server path without '..'", forbidden=False)
    if any(len(part.encode()) > 255 for part in Path(raw).parts):
        raise PathRefused(f"{field}: a folder or file name in {raw[:80]!r}... is longer than 255 bytes; "
                          "no file system has such a name, check the path", forbidden=False)
    try:
        return Path(raw).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, a path too long for the system
        raise PathRefused(f"{field}: {raw[:200]!r} cannot be resolved ({e.strerror or e}); check the path",
                          forbidden=False) from None


def collection_sources(db, coll: Collection) -> list[Path]:
    """The paths a collection was ingested from (its jobs' folders and files), its root, resolved."""
    out = {Path(coll.root).resolve()}
    for options in db.scalars(select(Job.options).where(Job.collection_id == coll.id)):
        for p in (options or {}).get("paths", []):
            p = Path(p)
            out.add(p.parent.resolve() if p.suffix.lower() == ".jsonl" else p.resolve())
    return sorted(out)


def _overlaps(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def check_ingest_paths(db, settings: Settings, collection: str, raw_paths: list[str], everywhere: bool) -> list[str]:
    """The resolved paths, if the caller may ingest them into `collection`; PathRefused naming the field otherwise.

    everywhere: the caller has write access to every collection (it may also re-ingest any collection's uploads and
    folders shared between collections)."""
    home = settings.home.resolve()
    libraries = [r.resolve() for r in settings.library_roots]
    own_uploads = upload_folder(settings, collection)
    coll = db.scalar(select(Collection).where(Collection.name == collection))
    own = collection_sources(db, coll) if coll is not None else []
    others = [] if everywhere else [
        src for c in db.scalars(select(Collection).where(Collection.name != collection))
        for src in collection_sources(db, c) + [upload_folder(settings, c.name)]]
    out = []
    for i, raw in enumerate(raw_paths):
        field = f"paths[{i}]"
        path = _resolve(raw, field)
        uploads = (settings.media_dir / "uploads").resolve()
        if path.is_relative_to(own_uploads) or (everywhere and path.is_relative_to(uploads) and path != uploads):
            out.append(str(path))
            continue
        if path.is_relative_to(home) or home.is_relative_to(path):
            raise PathRefused(f"{field}: {raw!r} is inside the data directory (or holds it); only a collection's own "
                              f"upload folder there can be ingested: upload files with POST /collections/"
                              f"{collection}/upload", forbidden=True)
        if any(path.is_relative_to(src) for src in own):  # a folder this collection was built from
            out.append(str(path))
            continue
        if not any(path.is_relative_to(lib) for lib in libraries):
            where = ", ".join(map(str, libraries)) if libraries else "none are set"
            raise PathRefused(f"{field}: {raw!r} is outside the library roots ({where}); the operator lists the server "
                              "folders that may be ingested in OMNIBRIDGE_LIBRARY_ROOTS", forbidden=True)
        if any(_overlaps(path, src) for src in others):
            raise PathRefused(f"{field}: {raw!r} holds files of another collection; a key scoped to {collection!r} "
                              "may ingest only folders no other collection uses", forbidden=True)
        out.append(str(path))
    return out


def serving_roots(db, settings: Settings, coll: Collection) -> list[Path]:
    """The folders (and files) a collection's files may be served from: its upload folder and its sources."""
    return [upload_folder(settings, coll.name)] + collection_sources(db, coll)


def may_serve(path: Path, roots: list[Path]) -> bool:
    """Whether a resolved file lies inside (or is) one of `roots` (see `serving_roots`)."""
    return any(path.is_relative_to(root) for root in roots)


def served_file(db, settings: Settings, uri: str, coll: Collection) -> Path | None:
    """The asset's file if it may be served (inside a source of its own collection, symlinks resolved), else None.
    FileNotFoundError when it is gone."""
    path = Path(uri).resolve(strict=True)
    return path if path.is_file() and may_serve(path, serving_roots(db, settings, coll)) else None


def shown_path(path: str | None, bases: list[Path]) -> str | None:
    """A path relative to the first base folder that holds it, else its file name: no server layout leaks."""
    if not path:
        return path
    p = Path(path)
    for base in bases:
        if p.is_relative_to(base) and p != base:
            return p.relative_to(base).as_posix()
    return p.name


def display_bases(db, settings: Settings, collection: str) -> list[Path]:
    """Folders a collection's paths are shown relative to: its upload folder, then its sources' parents."""
    coll = db.scalar(select(Collection).where(Collection.name == collection))
    bases = [upload_folder(settings, collection), generated_folder(settings)]
    if coll is not None:
        bases += [src if src.is_dir() else src.parent for src in collection_sources(db, coll)]
    return bases
