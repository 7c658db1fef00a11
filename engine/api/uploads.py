"""Uploads in the API: stored by ingest.uploads.store_upload (sanitized names, size limit, decode check); a refused
file is a 400 naming it, an oversized one a 413 (engine.api.main maps the errors)."""

from __future__ import annotations

from pathlib import Path

from fastapi import UploadFile

from engine.settings import Settings
from ingest.uploads import store_upload


def save_upload(upload: UploadFile, folder: Path, settings: Settings) -> Path:
    """Write the upload into `folder` under its sanitized name, checked (see ingest.uploads.store_upload)."""
    return store_upload(upload.file, upload.filename, folder, settings.max_file_bytes, settings.max_image_pixels)
