"""Uploaded files: plain, sanitized names (no folders, no '..'), a size limit (413) and a real image check (400)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from fastapi import HTTPException, UploadFile

from engine.settings import Settings
from ingest.media import IMAGE_EXTENSIONS, MediaError, load_image, media_kind, sha256_file

CHUNK = 1 << 20
MAX_NAME = 120


def plain_name(filename: str | None) -> str:
    """A safe file name for an upload: refused (400) if it names a folder or climbs out of one, else sanitized."""
    raw = filename or ""
    if not raw.strip():
        raise HTTPException(400, "file: the upload has no file name; send it as multipart form data with a filename")
    if any(c in raw for c in ("/", "\\", "\x00")) or raw.strip(".") == "":
        raise HTTPException(400, f"file {raw!r}: the name must be a plain file name, without folders or '..'")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).lstrip("._-")
    stem, dot, ext = name.rpartition(".")
    if not dot or media_kind(name) != "image":
        raise HTTPException(400, f"file {raw!r}: not an image file name; upload one of "
                                 f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    return f"{stem[:MAX_NAME]}.{ext.lower()}"


def save_upload(upload: UploadFile, folder: Path, settings: Settings, created: list[Path] | None = None) -> Path:
    """Write the upload into `folder` under its sanitized name and check it decodes as an image.

    A different file already stored under that name is kept: the new one gets a content-hash suffix. A file this
    call adds (not one already there with the same content) is appended to `created`, for clean-up on failure."""
    name = plain_name(upload.filename)
    limit = settings.max_file_bytes
    if upload.size is not None and upload.size > limit:
        raise _too_large(upload.filename, settings)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.{secrets.token_hex(4)}.part"  # dotfiles are never ingested
    try:
        size = 0
        with open(part, "wb") as f:
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(upload.filename, settings)
                f.write(chunk)
        try:
            load_image(part, max_pixels=settings.max_image_pixels, max_bytes=limit)
        except MediaError as e:
            reason = str(e).split(": ", 1)[-1]
            raise HTTPException(400, f"file {upload.filename!r}: {reason}") from None
        dest = folder / name
        if dest.exists():
            digest = sha256_file(part)
            if sha256_file(dest) == digest:
                return dest
            dest = folder / f"{Path(name).stem}-{digest[:8]}{Path(name).suffix}"
        part.replace(dest)
        if created is not None:
            created.append(dest)
        return dest
    finally:
        part.unlink(missing_ok=True)


def _too_large(filename: str | None, settings: Settings) -> HTTPException:
    return HTTPException(413, f"file {filename!r} is over the {settings.max_file_mb:g} MB limit "
                              "(OMNIBRIDGE_MAX_FILE_MB)")
