"""Storing uploaded images (API, UI): a sanitized name, a size limit, a full decode check, no silent overwrite."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import BinaryIO

from .media import MediaError, load_image, sha256_file, upload_name

CHUNK = 1 << 20


class UploadTooLarge(MediaError):
    """An upload is over OMNIBRIDGE_MAX_FILE_MB (the API answers 413)."""


def store_upload(data: BinaryIO, filename: str | None, folder: Path, max_bytes: int, max_pixels: int,
                 created: list[Path] | None = None) -> Path:
    """Write `data` into `folder` under the sanitized `filename` and check it decodes as an image; the path.

    Raises MediaError naming the file (a bad name, not a readable image) or UploadTooLarge. A different file
    already stored under that name is kept: the new one gets a content-hash suffix; the same content is not stored
    twice. A file this call adds is appended to `created`, for clean-up when a later file of a batch fails."""
    name = upload_name(filename)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.{secrets.token_hex(4)}.part"  # dotfiles are never ingested
    try:
        size = 0
        with open(part, "wb") as f:
            while chunk := data.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(f"file {filename!r} is over the {max_bytes / 2**20:g} MB limit "
                                         "(OMNIBRIDGE_MAX_FILE_MB)")
                f.write(chunk)
        try:
            load_image(part, max_pixels=max_pixels, max_bytes=max_bytes)
        except MediaError as e:
            raise MediaError(f"{filename!r} is not a readable image: {str(e).split(': ', 1)[-1]}") from None
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
